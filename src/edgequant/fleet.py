"""`fleet`: many models from one YAML file, one report each, one summary.

A failing model (missing file, bad data, quantization error) is recorded and the others go on;
a re-run skips models whose report matches the same model file, data, entry and tool (edgequant's
code, onnxruntime, this machine's target) unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import model as model_io
from . import provenance
from .errors import EdgequantError
from .fsutil import write_text_atomic
from .measure.session import SessionConfig
from .pipeline import Budget, RunOptions, run_pipeline
from .targets import TARGETS

_ENTRY_KEYS = {"name", "model", "calib", "eval", "preprocess", "metric", "budget", "tune", "target", "device", "output_roles",
               "threads", "runs", "min_time", "burst", "warmup", "calib_limit", "eval_limit", "time_budget", "selective",
               "float_fallback", "qat_minutes"}
_DEFAULT_KEYS = _ENTRY_KEYS - {"name", "model", "calib", "eval"}
_BUDGET_KEYS = {"max_drop", "max_abs_drop", "min_agreement", "min_cosine", "min_nn_agreement",
                "min_detection_agreement", "max_box_error", "max_box_rel_error"}


@dataclass(frozen=True)
class FleetEntry:
    name: str
    model: Path
    calib: str
    eval: str | None
    options: RunOptions
    tune: bool = False
    time_budget_min: float | None = None
    float_fallback: bool | None = None    # tune only; None: the target decides
    qat_minutes: float = 10.0             # tune only: the QAT step's training time (0: never)
    raw: dict = field(default_factory=dict)

    def missing_files(self) -> list[str]:
        """What this entry names that is not there, checked before any work."""
        problems = [] if self.model.is_file() else [f"model {self.model}: no such file"]
        for what, src in (("calib", self.calib), ("eval", self.eval)):
            if src and not src.startswith("random:") and not Path(src).exists():
                problems.append(f"{what} {src}: no such file or folder")
        return problems

    def fingerprint(self) -> str:
        """Identifies the inputs of a finished run: the model's bytes, the data, this entry's
        settings and the tool that ran it (a new edgequant or onnxruntime redoes the work)."""
        h = hashlib.sha256(model_io.sha256_file(self.model).encode())
        h.update(json.dumps(self.raw, sort_keys=True, default=str).encode())
        for src in (self.calib, self.eval):
            h.update(provenance.data_fingerprint(src).encode())
        h.update(provenance.tool_fingerprint().encode())
        return h.hexdigest()


def _source(value: str, base: Path) -> str:
    """Relative file sources are relative to the YAML file; random:N stays as is."""
    if value.startswith("random:"):
        return value
    p = Path(value)
    return os.path.normpath(p if p.is_absolute() else (base / p))


def _number(where: str, value, *, lo: float | None = None, integer: bool = False):
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (lo is not None and value < lo):
        kind = "an integer" if integer else "a number"
        raise EdgequantError(f"{where}: must be {kind}{f' >= {lo:g}' if lo is not None else ''}, got {value!r}")
    return value


def _entry(fleet_path: Path, i: int, raw: dict, defaults: dict) -> FleetEntry:
    where = f"{fleet_path}: models[{i}]"
    if not isinstance(raw, dict):
        raise EdgequantError(f"{where}: must be a mapping with name, model, calib")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise EdgequantError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    for key in ("name", "model", "calib"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise EdgequantError(f"{where}: '{key}' is required (a string)")
    name = raw["name"]
    if not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise EdgequantError(f"{where}: name {name!r} must be letters, digits, '-', '_' or '.' (it names a folder)")
    merged = {**defaults, **raw}
    base = fleet_path.parent
    budget_raw = merged.get("budget") or {}
    if not isinstance(budget_raw, dict) or set(budget_raw) - _BUDGET_KEYS:
        raise EdgequantError(f"{where}.budget: expected a mapping with keys among {', '.join(sorted(_BUDGET_KEYS))}")
    budget = Budget(**{k: _number(f"{where}.budget.{k}", v, lo=0) for k, v in budget_raw.items()})
    target = merged.get("target", "auto")
    if target not in ("auto", *TARGETS):
        raise EdgequantError(f"{where}.target: {target!r} is not one of auto, {', '.join(TARGETS)}")
    from .devices import DEVICE_NAMES

    roles = merged.get("output_roles") or {}
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        raise EdgequantError(f"{where}.output_roles: expected a mapping of output name -> role")
    device = merged.get("device", "auto")
    if device not in ("auto", *DEVICE_NAMES) and not (isinstance(device, str) and device.replace("-", "").replace(
            "_", "").isalnum()):
        # other names are boards on a Ray cluster, checked when the model runs
        raise EdgequantError(f"{where}.device: {device!r} is not one of auto, {', '.join(DEVICE_NAMES)} "
                             "or a board's name")
    preprocess = None
    if merged.get("preprocess") is not None:
        from .data import Preprocess

        if not isinstance(merged["preprocess"], dict):
            raise EdgequantError(f"{where}.preprocess: must be a mapping (size, resize, color, layout, scale, mean, std)")
        preprocess = Preprocess.from_mapping(merged["preprocess"], where=f"{where}.preprocess")
    ints = {k: _number(f"{where}.{k}", merged[k], lo=lo, integer=True)
            for k, lo in (("threads", 0), ("runs", 2), ("burst", 1), ("warmup", 0), ("calib_limit", 1),
                          ("eval_limit", 1))
            if merged.get(k) is not None}
    metric = merged.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise EdgequantError(f"{where}.metric: must be a string (top1 or module:function)")
    tb = merged.get("time_budget")
    float_fallback = merged.get("float_fallback")
    if float_fallback is not None and not isinstance(float_fallback, bool):
        raise EdgequantError(f"{where}.float_fallback: must be true or false")
    options = RunOptions(
        target=target, budget=budget, session=SessionConfig(intra_op_threads=ints.get("threads", 1)),
        warmup=ints.get("warmup", 10), runs=ints.get("runs", 100), burst=ints.get("burst", 1), metric=metric,
        preprocess=preprocess,
        **({"min_time_s": _number(f"{where}.min_time", merged["min_time"], lo=0)}
           if merged.get("min_time") is not None else {}),
        calib_limit=ints.get("calib_limit", 200), eval_limit=ints.get("eval_limit"),
        selective=bool(merged.get("selective", False)), device=device, output_roles=dict(roles))
    return FleetEntry(name=name, model=Path(_source(raw["model"], base)), calib=_source(raw["calib"], base),
                      eval=_source(raw["eval"], base) if raw.get("eval") else None, options=options,
                      tune=bool(merged.get("tune", False)),
                      time_budget_min=_number(f"{where}.time_budget", tb, lo=0) if tb is not None else None,
                      float_fallback=float_fallback, raw=merged,
                      **({"qat_minutes": _number(f"{where}.qat_minutes", merged["qat_minutes"], lo=0)}
                         if merged.get("qat_minutes") is not None else {}))


def load_fleet(path: str | Path) -> list[FleetEntry]:
    """Parse and validate a fleet YAML file (errors name the file and the entry)."""
    p = Path(path)
    if not p.is_file():
        raise EdgequantError(f"{p}: no such file")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise EdgequantError(f"{p}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise EdgequantError(f"{p}: expected a mapping with a non-empty 'models' list")
    extra = set(doc) - {"models", "defaults"}
    if extra:
        raise EdgequantError(f"{p}: unknown top-level key(s) {', '.join(sorted(extra))}; allowed: defaults, models")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
        raise EdgequantError(f"{p}: defaults: expected a mapping with keys among {', '.join(sorted(_DEFAULT_KEYS))}")
    entries = [_entry(p, i, raw, defaults) for i, raw in enumerate(doc["models"])]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EdgequantError(f"{p}: duplicate model name(s) {', '.join(dupes)}")
    return entries


@dataclass
class FleetOutcome:
    name: str
    status: str                 # done | up to date | failed
    report: dict | None = None
    error: str | None = None
    elapsed_s: float | None = None  # wall time of this model's run where it ran (None: not run now)


def _finished(entry: FleetEntry, out: Path) -> dict | None:
    from .report import read_report

    stamp = out / ".fingerprint"
    if not (out / "report.json").is_file() or not stamp.is_file():
        return None
    try:
        if stamp.read_text().strip() != entry.fingerprint():
            return None
        return read_report(out / "report.json")
    except (EdgequantError, OSError):
        return None


def run_entry(entry: FleetEntry, target_dir: Path, progress: Callable[[str], None] | None = None) -> dict:
    """One model: ``run`` (or ``tune``) into ``target_dir``, stamped with the entry's fingerprint."""
    if entry.tune:
        from .tune import TuneOptions, run_tune

        report = run_tune(entry.model, target_dir, calib=entry.calib, eval_spec=entry.eval,
                          options=TuneOptions(run=entry.options, time_budget_min=entry.time_budget_min,
                                              float_fallback=entry.float_fallback,
                                              qat_minutes=entry.qat_minutes),
                          progress=progress)
    else:
        report = run_pipeline(entry.model, target_dir, calib=entry.calib, eval_spec=entry.eval,
                              options=entry.options, progress=progress)
    write_text_atomic(target_dir / ".fingerprint", entry.fingerprint() + "\n")
    return report


def failure(entry_name: str, exc: BaseException) -> FleetOutcome:
    """A model's run that raised: one line, the fleet goes on."""
    if isinstance(exc, EdgequantError):
        return FleetOutcome(entry_name, "failed", error=str(exc))
    return FleetOutcome(entry_name, "failed", error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def triage(entries: list[FleetEntry], out_dir: Path, *, force: bool) -> tuple[dict[str, FleetOutcome], list[FleetEntry]]:
    """Outcomes known before any work (missing files, up to date) and the entries left to run."""
    known: dict[str, FleetOutcome] = {}
    todo = []
    for entry in entries:
        missing = entry.missing_files()
        if missing:  # known before any work: no quantization started for it
            known[entry.name] = FleetOutcome(entry.name, "failed", error="; ".join(missing))
            continue
        done = None if force else _finished(entry, out_dir / entry.name)
        if done is not None:
            known[entry.name] = FleetOutcome(entry.name, "up to date", done)
        else:
            todo.append(entry)
    return known, todo


#: Runs the entries left to run; yields one outcome each (in any order). The default runs them
#: here, one after another; ``edgequant.scaleout`` runs them as Ray tasks.
Executor = Callable[[list[FleetEntry], Path, Callable[[str, str], None] | None], Iterable[FleetOutcome]]


def run_here(todo: list[FleetEntry], out_dir: Path,
             progress: Callable[[str, str], None] | None = None) -> Iterator[FleetOutcome]:
    for entry in todo:
        say = (lambda msg, _n=entry.name: progress(_n, msg)) if progress else None
        started = time.monotonic()
        try:
            report = run_entry(entry, out_dir / entry.name, say)
        except Exception as exc:  # noqa: BLE001 - one model's crash must not stop the fleet
            yield failure(entry.name, exc)
            continue
        yield FleetOutcome(entry.name, "done", report, elapsed_s=round(time.monotonic() - started, 2))


def longest_first(todo: list[FleetEntry], out_dir: Path) -> list[FleetEntry]:
    """The order in which to hand entries to parallel workers: expected longest first (the LPT rule,
    so that no worker is left alone with a long model at the end). Expected = the model's elapsed
    time in the last ``fleet.json`` here when every entry has one; else its graph's node count (what
    calibration and onnxruntime's quantizer scale with), tune entries first (a search runs many)."""
    past: dict[str, float] = {}
    try:
        past = {row["name"]: float(row["elapsed_s"])
                for row in json.loads((out_dir / "fleet.json").read_text())["models"] if row.get("elapsed_s")}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if all(e.name in past for e in todo):
        return sorted(todo, key=lambda e: -past[e.name])

    def nodes(entry: FleetEntry) -> int:
        try:
            return len(model_io.load_model(entry.model, check=False, weights=False).graph.node)
        except EdgequantError:   # a broken model fails in its own run, with its reason
            return 0

    count = {e.name: nodes(e) for e in todo}
    return sorted(todo, key=lambda e: (not e.tune, -count[e.name]))


def run_fleet(fleet_path: str | Path, out_dir: str | Path, *, force: bool = False,
              progress: Callable[[str, str], None] | None = None,
              executor: Executor | None = None) -> list[FleetOutcome]:
    """Run every entry; returns one outcome per model (in the YAML's order) and writes
    ``out_dir/index.html``."""
    entries = load_fleet(fleet_path)
    out_dir = Path(out_dir)
    known, todo = triage(entries, out_dir, force=force)
    for outcome in (executor or run_here)(todo, out_dir, progress):
        known[outcome.name] = outcome
    outcomes = [known[e.name] for e in entries]
    write_index(out_dir, outcomes)
    return outcomes


def write_index(out_dir: Path, outcomes: list[FleetOutcome]) -> None:
    from .report.fleet_html import render_index

    summary = fleet_summary(outcomes)
    write_text_atomic(out_dir / "fleet.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out_dir / "index.html", render_index(summary))


def best_int8_attempt(variants: list[dict]) -> dict | None:
    """The INT8 variant worth showing next to FP32: the recommended one if any, else the fastest
    within budget, else the fastest that quantized anything (so a fp32 verdict shows its cause)."""
    real = [v for v in variants[1:] if v["config"].get("mode") != "fp32-opt"
            and not (v.get("int8_coverage") or {}).get("quantized_compute_ops") == 0]
    within = [v for v in real if v.get("within_budget")]
    pool = within or real
    return max(pool, key=lambda v: v["speedup"]) if pool else None


def fleet_summary(outcomes: list[FleetOutcome]) -> dict:
    """One row per model: FP32 vs the recommended variant (the seed's 4.1 table, measured)."""
    rows = []
    for o in outcomes:
        row: dict = {"name": o.name, "status": o.status, "error": o.error, "elapsed_s": o.elapsed_s}
        if o.report:
            r = o.report
            by_name = {v["name"]: v for v in r["variants"]}
            fp32, rec = by_name["fp32"], by_name.get(r["recommended"], by_name["fp32"])
            best_int8 = best_int8_attempt(r["variants"])
            device = r.get("device") or {"name": "cpu", "kind": "cpu", "emulated": False}
            row.update({
                "target": r.get("target", "?"), "device": device["name"], "emulated": bool(device.get("emulated")),
                "placement": rec.get("placement"),
                "recommended": r["recommended"], "reason": r.get("recommendation_reason", ""),
                "fp32_ms": fp32["latency_ms"]["p50"], "recommended_ms": rec["latency_ms"]["p50"],
                "speedup": rec["speedup"], "fp32_mb": fp32["size_bytes"] / 1e6, "recommended_mb": rec["size_bytes"] / 1e6,
                "fp32_peak_mb": fp32["peak_memory_mb"], "recommended_peak_mb": rec["peak_memory_mb"],
                "accuracy": rec.get("accuracy"), "fp32_accuracy": fp32.get("accuracy"),
                "fidelity": rec["fidelity"],
                "variants": [{"name": v["name"], "p50_ms": v["latency_ms"]["p50"], "speedup": v["speedup"],
                              "within_budget": v.get("within_budget"), "verdict": v.get("verdict", ""),
                              "budget_decision": v.get("budget_decision"), "samples_needed": v.get("samples_needed"),
                              "accuracy": v.get("accuracy")} for v in r["variants"]],
                "best_int8": ({"name": best_int8["name"], "speedup": best_int8["speedup"],
                               "accuracy": best_int8.get("accuracy"), "fidelity": best_int8["fidelity"],
                               "verdict": best_int8.get("verdict", ""),
                               "budget_decision": best_int8.get("budget_decision"),
                               "samples_needed": best_int8.get("samples_needed")} if best_int8 else None),
                "machine": r["machine"], "report": f"{o.name}/report.html",
                "executed_on": r.get("executed_on")})     # the Ray node that ran it (edgequant.scaleout)
        rows.append(row)
    return {"schema": "edgequant.fleet/1", "models": rows}
