"""Write benchmarks/results/ZOO.md and zoo.json from a finished zoo fleet run, with ORT's
default flows measured beside edgequant's recommendation.

``python -m benchmarks.zoo.report --fleet-dir reports/zoo [--loadavg FILE] [--runs 30]``.
Per model: the fleet's report.json (FP32 latency, recommended variant, speedup with its 95 %
interval, size, peak memory, task metric, the reason when the answer is fp32), then ORT's
``quantize_dynamic`` and ``quant_pre_process`` + ``quantize_static`` defaults, timed interleaved
with FP32 and the recommended model in one run and scored on the same evaluation data.
Results are kept per target (ISA): zoo.json holds every target measured so far.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import yaml

from edgequant import api

from .ort_default import ort_dynamic, ort_static
from .registry import BY_NAME

RESULTS = Path("benchmarks/results")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _entries(fleet_yaml: Path) -> list[dict]:
    doc = yaml.safe_load(fleet_yaml.read_text())
    base = fleet_yaml.parent
    out = []
    for e in doc["models"]:
        merged = {**doc.get("defaults", {}), **e}
        for k in ("model", "calib", "eval"):
            merged[k] = str((base / merged[k]).resolve())
        out.append(merged)
    return out


def _variant(report: dict, name: str) -> dict:
    return next(v for v in report["variants"] if v["name"] == name)


def _acc(entry: dict | None) -> dict | None:
    if not entry:
        return None
    return {"metric": entry["metric"], "value": entry["value"], "fp32": entry.get("reference_value"),
            "drop": entry.get("drop")}


def _side_by_side(e: dict, report: dict, work: Path, runs: int, log) -> dict:
    """ORT's default flows beside FP32 and the recommended model, one interleaved timing run."""
    work.mkdir(parents=True, exist_ok=True)
    fp32 = Path(e["model"])
    rec = _variant(report, report["recommended"])
    flows = {"ort_dynamic": (work / "ort_dynamic.onnx", lambda out: ort_dynamic(fp32, out)),
             "ort_static": (work / "ort_static.onnx",
                            lambda out: ort_static(fp32, out, e["calib"], e.get("calib_limit")))}
    result: dict = {}
    timed = [str(fp32)] + ([rec["path"]] if report["recommended"] != "fp32" else [])
    for name, (out, build) in flows.items():
        log(f"{e['name']}: {name}")
        error = build(out)
        if error is None:
            try:
                ev = api.evaluate(out, e["eval"], reference=fp32, metric=e.get("metric"), limit=e.get("eval_limit"),
                                  threads=e.get("threads", 1))
                fid = ev.fidelity.to_dict() if ev.fidelity is not None else {}
                result[name] = {"accuracy": _acc(ev.accuracy), "cosine": fid.get("cosine"),
                                "size_bytes": out.stat().st_size + sum(p.stat().st_size for p in out.parent.glob(out.name + ".data"))}
                timed.append(str(out))
            except Exception as exc:  # noqa: BLE001 - a model ORT built but cannot run is a result
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"
        if error is not None:
            result[name] = {"error": error}
    log(f"{e['name']}: timing {len(timed)} models interleaved ({runs} rounds)")
    bench = api.bench(timed, input=e["eval"], threads=e.get("threads", 1), warmup=5, runs=runs)
    by_path = {m.path: m for m in bench.sweep[0].models}
    for name, (out, _) in flows.items():
        m = by_path.get(str(out))
        if m is not None:
            result[name].update(speedup=m.speedup.ratio, speedup_ci=[m.speedup.ci_low, m.speedup.ci_high])
    if report["recommended"] != "fp32":
        m = by_path[rec["path"]]
        result["recommended_same_run"] = {"speedup": m.speedup.ratio, "speedup_ci": [m.speedup.ci_low, m.speedup.ci_high]}
    return result


def collect(fleet_yaml: Path, fleet_dir: Path, runs: int, log=print, only: list[str] | None = None) -> list[dict]:
    fleet_dir = fleet_dir.resolve()  # ORT's flows run with the cwd in a scratch folder
    rows = []
    for e in _entries(fleet_yaml):
        if only and e["name"] not in only:
            continue
        spec = BY_NAME.get(e["name"])
        row = {"name": e["name"], "family": spec.family if spec else "", "source": f"{spec.dist}=={spec.version}" if spec else "",
               "data": spec.data if spec else ""}
        path = fleet_dir / e["name"] / "report.json"
        if not path.is_file():
            row["error"] = f"no report ({path}): the fleet run failed for this model (see {fleet_dir}/fleet.json)"
            rows.append(row)
            continue
        report = json.loads(path.read_text())
        fp32, rec = _variant(report, "fp32"), _variant(report, report["recommended"])
        row.update(target=report.get("target"), machine=report["machine"], fp32_p50_ms=fp32["latency_ms"]["p50"],
                   fp32_size_bytes=fp32["size_bytes"], fp32_peak_mb=fp32.get("peak_memory_mb"),
                   recommended=report["recommended"], reason=report.get("recommendation_reason"),
                   speedup=rec.get("speedup"), speedup_ci=rec.get("speedup_ci"), size_bytes=rec["size_bytes"],
                   peak_mb=rec.get("peak_memory_mb"), accuracy=_acc(rec.get("accuracy")),
                   fp32_accuracy=_acc(fp32.get("accuracy")), cosine=(rec.get("fidelity") or {}).get("cosine"),
                   tuned=bool(e.get("tune")), budget=report.get("budget"),
                   verdicts={v["name"]: v.get("verdict") for v in report["variants"]},
                   failed={f["name"]: f.get("error") for f in report.get("failed_variants", [])},
                   advice=report.get("advice"))
        try:
            row["ort"] = _side_by_side(e, report, fleet_dir / e["name"] / "ort-default", runs, log)
        except Exception as exc:  # noqa: BLE001 - keep the other models' rows
            row["ort"] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from edgequant.fsutil import write_text_atomic

    from .zoo_md import render

    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleet", type=Path, default=Path("benchmarks/zoo/fleet.yaml"))
    p.add_argument("--fleet-dir", type=Path, default=Path("reports/zoo"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--runs", type=int, default=30, help="interleaved rounds for the ORT side-by-side timing")
    p.add_argument("--loadavg", type=Path, help="file with /proc/loadavg lines taken around the fleet run")
    p.add_argument("--only", nargs="*", help="measure these models only; the others keep their rows from zoo.json")
    a = p.parse_args(argv)
    start_load = _loadavg()
    rows = collect(a.fleet, a.fleet_dir, a.runs, log=lambda s: print(f"[zoo.report] {s}", file=sys.stderr, flush=True),
                   only=a.only)
    measured = [r for r in rows if "machine" in r]
    if not measured:
        print(f"error: {a.fleet_dir}: no zoo report found (run `make zoo`)", file=sys.stderr)
        return 1
    fleet_load = ""
    if a.loadavg and a.loadavg.is_file():
        lines = [" ".join(ln.split()[:3]) for ln in a.loadavg.read_text().splitlines() if ln.strip()]
        fleet_load = f"fleet run: {' -> '.join(lines)}; "
    target = measured[0]["target"]
    json_path = a.out / "zoo.json"
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError):
        doc = {"schema": "edgequant.zoo-results/1", "targets": {}}
    load = f"{fleet_load}side-by-side run: {start_load} -> {_loadavg()}"
    if a.only and target in doc["targets"]:  # merge: keep the other models' rows, in fleet order
        old = doc["targets"][target]
        kept = {r["name"]: r for r in old["models"]}
        kept.update({r["name"]: r for r in rows})
        order = [e["name"] for e in _entries(a.fleet)]
        rows = [kept[n] for n in order if n in kept]
        load = f"{old['loadavg']}; {', '.join(a.only)}: {load}"
    doc["targets"][target] = {"machine": measured[0]["machine"], "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "loadavg": load, "models": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, json.dumps(doc, indent=1, default=str) + "\n")
    write_text_atomic(a.out / "ZOO.md", render(doc))
    print(f"wrote {a.out / 'ZOO.md'} and {json_path} ({target}, {len(measured)}/{len(rows)} models measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
