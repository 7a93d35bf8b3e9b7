"""mobilenet_v3_small (torch dynamo export, opset 20), static INT8: FP32 vs onnxruntime's default
``quantize_static`` vs ``edgequant quantize --mode static``, with and without the Hard-Swish /
squeeze-excite rewrites of :mod:`edgequant.qdq.hard_activations`, 1 thread, interleaved in one process.

    benchmarks/.venv/bin/python benchmarks/export_models.py benchmarks/.models mobilenet_v3_small
    .venv/bin/python benchmarks/bench_mobilenet_v3.py [--rounds 150] [--profile-runs 50]

Variants (calibration: 32 synthetic images from ``bench_data``, as the suite's CNNs; fidelity on 16 others):

* ``ort_default_static``: ``quant_pre_process`` + ``quantize_static(QDQ)`` with its defaults.
* ``edgequant_before``: ``edgequant.api.quantize(mode="static")`` with the issue-14 rewrites switched
  off (ReduceMean -> GlobalAveragePool, SE HardSigmoid folded into its Conv, HardSigmoid -> QLinearAdd),
  i.e. the recipe before them.
* ``edgequant``: ``edgequant.api.quantize(mode="static")``, defaults (``edgequant quantize --mode static``).
* ``edgequant_mse``: the same with ``calib_method="mse"`` (``--calib-method mse``).

Writes ``MOBILENET_V3.md`` and ``mobilenet_v3.json`` in the ISA's results folder (results/, vnni/, amx/),
with each variant's per-op-type profile (onnxruntime's profiler, 1 thread).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
from bench_data import samples  # noqa: E402
from bench_report import fidelity, isa_results_dir, machine, outputs, profile  # noqa: E402
from bench_timing import interleaved, speedup_ci  # noqa: E402
from bench_variants import ort_default_static  # noqa: E402

from edgequant.qdq import coverage  # noqa: E402

CALIB_N, EVAL_N = 32, 16
GOAL_SPEEDUP, GOAL_COSINE = 1.5, 0.99


@contextlib.contextmanager
def _without_hard_activation_rewrites():
    """The recipe as it was before issue 14's rewrites (for the before/after row only)."""
    from edgequant.qdq import hard_activations as ha

    saved = ha.PREPARE_PASSES, ha.HardSigmoidAsAdd.run
    ha.PREPARE_PASSES, ha.HardSigmoidAsAdd.run = (), lambda self, model, context: 0
    try:
        yield
    finally:
        ha.PREPARE_PASSES, ha.HardSigmoidAsAdd.run = saved


def _edgequant(src: Path, out: Path, calib: Path, **overrides) -> dict:
    from edgequant import api

    res = api.quantize(src, out, mode="static", calib=str(calib), force=True, **overrides)
    flags = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return {"recipe": f"edgequant.api.quantize(mode='static'{', ' + flags if flags else ''})",
            "notes": list(res.notes), "warnings": list(res.warnings)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--profile-runs", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--md-only", action="store_true", help="rewrite MOBILENET_V3.md from mobilenet_v3.json")
    args = ap.parse_args()
    mach = machine()
    out_dir = Path(args.out or isa_results_dir(HERE / "results", mach))
    if args.md_only:
        _write_md(json.loads((out_dir / "mobilenet_v3.json").read_text()), out_dir / "MOBILENET_V3.md")
        return
    work = HERE / ".work" / "mobilenet_v3"
    work.mkdir(parents=True, exist_ok=True)
    src = HERE / ".models" / "mobilenet_v3_small.onnx"
    calib = samples("image", CALIB_N, seed=1)
    npz = work / "calib.npz"
    np.savez(npz, input=np.concatenate([c["input"] for c in calib]))
    paths = {"fp32": src, **{k: work / f"{k}.onnx" for k in ("ort_default_static", "edgequant_before",
                                                               "edgequant", "edgequant_mse")}}

    def before() -> dict:
        with _without_hard_activation_rewrites():
            return _edgequant(src, paths["edgequant_before"], npz)

    builders = {"ort_default_static": lambda: ort_default_static(src, paths["ort_default_static"], calib),
                "edgequant_before": before,
                "edgequant": lambda: _edgequant(src, paths["edgequant"], npz),
                "edgequant_mse": lambda: _edgequant(src, paths["edgequant_mse"], npz, calib_method="mse")}
    info: dict[str, dict] = {"fp32": {"recipe": "torch.onnx.export(dynamo=True, opset_version=20)"}}
    for k, build in builders.items():
        t0 = time.perf_counter()
        info[k] = build()
        info[k]["quantize_seconds"] = time.perf_counter() - t0
        print(f"built {k} in {info[k]['quantize_seconds']:.1f}s", flush=True)

    evals = samples("image", EVAL_N, seed=1000)
    ref = outputs(str(src), evals)
    res: dict = {"model": str(src.relative_to(HERE.parent)), "machine": mach, "threads": 1, "rounds": args.rounds,
                 "variants": {}}
    for k, p in paths.items():
        cov = coverage(p)
        prof = profile(str(p), evals[0], 1, args.profile_runs, str(work / f"profile_{k}"))
        res["variants"][k] = {"path": str(p.relative_to(HERE.parent)), "size_mb": p.stat().st_size / 1e6,
                              "int8_ops": f"{cov.quantized_compute_ops}/{cov.compute_ops}", "ops": cov.op_counts,
                              "fidelity": None if k == "fp32" else fidelity(ref, outputs(str(p), evals), True),
                              "profile": {o["op"]: round(o["ms_per_run"], 3) for o in prof["ops"]},
                              "profile_total_ms": prof["total_ms"], **info[k]}
    res["loadavg_before"] = os.getloadavg()
    timings = interleaved({k: str(v) for k, v in paths.items()}, evals[0], threads=1, rounds=args.rounds)
    res["loadavg_after"] = os.getloadavg()
    for k, tm in timings.items():
        v = res["variants"][k]
        v["latency"] = tm.summary()
        if k != "fp32":
            v["speedup"] = speedup_ci(timings["fp32"], tm)
            v["vs_ort_default"] = speedup_ci(timings["ort_default_static"], tm)
        print(f"{k}: {tm.median:.2f} ms", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mobilenet_v3.json").write_text(json.dumps(res, indent=2, default=str))
    _write_md(res, out_dir / "MOBILENET_V3.md")
    print(f"wrote {out_dir / 'MOBILENET_V3.md'}")


def _write_md(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = ["# mobilenet_v3_small (torch dynamo export, opset 20): static INT8 on this machine", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa'])}; onnxruntime {m['onnxruntime']}, "
             f"python {m['python']}.", "",
             "Command: `.venv/bin/python benchmarks/bench_mobilenet_v3.py"
             f" --rounds {res['rounds']}` (model: `benchmarks/.venv/bin/python benchmarks/export_models.py "
             "benchmarks/.models mobilenet_v3_small`).", "",
             f"1 thread, {res['rounds']} interleaved rounds (random order per round), median ms, speedup vs FP32 "
             "with its 95% paired bootstrap interval; load average before "
             f"{' '.join(f'{x:.2f}' for x in res['loadavg_before'])}, after "
             f"{' '.join(f'{x:.2f}' for x in res['loadavg_after'])} (2-core machine shared with other jobs). "
             f"Cosine: logits vs FP32 over {EVAL_N} synthetic images.", "",
             "| variant | median ms | speedup vs FP32 [95% CI] | vs ORT default | cosine | top-1 agree | INT8 ops |",
             "|---|---|---|---|---|---|---|"]
    for k, v in res["variants"].items():
        sp, vs, fid = v.get("speedup"), v.get("vs_ort_default"), v["fidelity"]
        speed = f"{sp['speedup']:.2f}x [{sp['ci95_low']:.2f}-{sp['ci95_high']:.2f}]" if sp else "1.00x"
        vs_ort = f"{vs['speedup']:.2f}x" if vs else "-"
        acc = f"{fid['cosine']:.4f} | {fid['top1_agreement']:.2f}" if fid else "1 | 1"
        lines.append(f"| {k} | {v['latency']['median_ms']:.2f} | {speed} | {vs_ort} | {acc} | {v['int8_ops']} |")
    v = res["variants"]
    best = max((k for k in v if k.startswith("edgequant") and k != "edgequant_before"
                and v[k]["fidelity"]["cosine"] >= GOAL_COSINE), key=lambda k: v[k]["speedup"]["speedup"], default=None)
    lines += ["", f"Goal (issue 14): >= {GOAL_SPEEDUP}x FP32 at cosine >= {GOAL_COSINE}, never below onnxruntime's "
              "default. " + (f"Best within the cosine budget: `{best}` {v[best]['speedup']['speedup']:.2f}x FP32, "
                             f"{v[best]['vs_ort_default']['speedup']:.2f}x ORT default: speed goal "
                             + ("met." if v[best]['speedup']['speedup'] >= GOAL_SPEEDUP else "**not met** "
                                "(benchmarks/FINDINGS.md, issue 14: what the profile shows limits it).")
                             if best else "No edgequant variant within the cosine budget.")]
    lines += ["", "Per-op-type profile (onnxruntime profiler, ms per run, 1 thread, kernel time only; profiled one "
              "variant after another, so the load of the moment shows in the totals):", ""]
    ops = sorted({o for v in res["variants"].values() for o in v["profile"]},
                 key=lambda o: -max(v["profile"].get(o, 0) for v in res["variants"].values()))
    lines += ["| op | " + " | ".join(res["variants"]) + " |", "|---|" + "---|" * len(res["variants"])]
    for o in ops:
        lines.append(f"| {o} | " + " | ".join(f"{v['profile'].get(o, 0):.3f}" for v in res["variants"].values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v['profile_total_ms']:.2f}**" for v in res["variants"].values())
                 + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
