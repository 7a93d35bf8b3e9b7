"""FP32 -> dynamic -> static, measured side by side, and the recommendation rule.

Data flows one way: sources -> quantized variants -> measurements (fidelity/accuracy, latency,
memory, coverage) -> recommendation -> report dict. ``tune`` and ``fleet`` reuse these steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import model as model_io
from .errors import EdgequantError
from .metrics import accuracy_entry
from .measure.session import SessionConfig
from .quantize import QuantizeConfig, QuantizeResult, make_config, quantize_model
from .measure.machine import machine_facts

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """How much accuracy an INT8 variant may lose.

    With a task metric: ``max_abs_drop`` (in the metric's units) when set, else ``max_drop`` as a
    fraction of the FP32 value. Without one (no labels): top-1 agreement with FP32 >= ``min_agreement``
    for classifier-like outputs, else output cosine >= ``min_cosine``.
    """

    max_drop: float = 0.01
    max_abs_drop: float | None = None
    min_agreement: float = 0.99
    min_cosine: float = 0.99

    def describe(self) -> str:
        task = (f"task metric drop <= {self.max_abs_drop:g} (absolute)" if self.max_abs_drop is not None
                else f"task metric drop <= {self.max_drop:.1%} of FP32")
        return (f"{task}; without a task metric: top-1 agreement >= {self.min_agreement:g} "
                f"or output cosine >= {self.min_cosine:g}")

    def check(self, fp32_accuracy: dict | None, accuracy: dict | None, fidelity: dict) -> tuple[bool, str]:
        """(within budget, why) for one variant."""
        if accuracy is not None and fp32_accuracy is not None:
            drop, ref = accuracy["drop"], fp32_accuracy["value"]
            if self.max_abs_drop is not None:
                limit = self.max_abs_drop
            elif abs(ref) > 0:
                limit = self.max_drop * abs(ref)
            else:
                limit = None  # a relative budget of a zero reference means nothing: use fidelity
            if limit is not None:
                ok = drop <= limit + 1e-12
                return ok, f"{accuracy['metric']} drop {drop:.4g} {'<=' if ok else '>'} budget {limit:.4g}"
        agree = fidelity.get("top1_agreement")
        if agree is not None:
            ok = agree >= self.min_agreement
            return ok, f"top-1 agreement with FP32 {agree:.3f} {'>=' if ok else '<'} {self.min_agreement:g}"
        cos = fidelity["cosine"]
        ok = cos >= self.min_cosine
        return ok, f"output cosine {cos:.4f} {'>=' if ok else '<'} {self.min_cosine:g}"


@dataclass(frozen=True)
class RunOptions:
    target: str = "auto"
    budget: Budget = field(default_factory=Budget)
    session: SessionConfig = field(default_factory=lambda: SessionConfig(intra_op_threads=1))
    warmup: int = 10
    runs: int = 100
    metric: str | None = None
    preprocess: object | None = None      # edgequant.data.Preprocess for image folders
    calib_limit: int | None = 200
    eval_limit: int | None = None
    measure_memory: bool = True
    memory_runs: int = 10
    # Below this, INT8's accuracy risk buys too little; also absorbs layout/cache effects that
    # make even an unchanged graph measure a few percent apart.
    min_speedup: float = 1.05
    profile: bool = True                  # per-op kernel times, to explain slow variants
    selective: bool = False               # also search INT8/FP32 mixes by per-node timing
    selective_budget_s: float = 90.0
    device: str = "cpu"                   # where variants run and are measured (edgequant.devices)

    def make_device(self):
        """The device every measurement of this run goes through, with this run's session."""
        from .devices import get_device

        return get_device(self.device, self.session)


@dataclass
class Candidate:
    """A model to measure: the FP32 original or a quantized variant."""

    name: str
    path: Path
    config: dict
    notes: list[str] = field(default_factory=list)


def default_variants(target: str) -> list[tuple[str, QuantizeConfig]]:
    """The seed's pipeline: dynamic (weights only) and static (weights + activations)."""
    return [("dynamic", make_config("dynamic", target)), ("static", make_config("static", target))]


def quantize_variants(model_path: Path, out_dir: Path, specs: Sequence[tuple[str, QuantizeConfig]],
                      calib, progress: Progress | None = None) -> tuple[list[Candidate], list[dict]]:
    """Quantize each spec; a failing recipe is recorded, not fatal."""
    made, failed = [], []
    for name, config in specs:
        if progress:
            progress(f"quantizing {name}")
        out = out_dir / f"{model_path.stem}.{name}.onnx"
        try:
            res: QuantizeResult = quantize_model(model_path, out, config, calib if config.mode == "static" else None)
        except EdgequantError as exc:
            failed.append({"name": name, "config": config.to_dict(), "error": str(exc)})
            continue
        made.append(Candidate(name, out, config.to_dict(), [*res.warnings, *res.notes]))
    return made, failed


def measure_candidates(candidates: Sequence[Candidate], eval_source, options: RunOptions,
                       progress: Progress | None = None) -> list[dict]:
    """Measure every candidate (first = FP32 reference) the same way; returns variant dicts."""
    from .measure.accuracy import load_metric
    from .measure.fidelity import compare_outputs

    device = options.make_device()
    paths = [str(c.path) for c in candidates]
    if progress:
        progress(f"running {len(paths)} models on {getattr(eval_source, 'count', '?')} samples")
    collected = device.outputs(paths, eval_source)
    reference = collected.outputs[0]
    metric = None
    if not getattr(eval_source, "synthetic", False) and (options.metric or collected.labels is not None):
        metric = load_metric(options.metric or "top1")
    fp32_metric = metric(reference, collected.labels, reference) if metric else None

    if progress:
        progress(f"timing {len(paths)} models interleaved ({options.runs} rounds)")
    first = next(iter(eval_source))
    bench = device.time_interleaved(paths, first.feeds, warmup=options.warmup, runs=options.runs)

    base = device.baseline_memory() if options.measure_memory else None
    variants = []
    for i, cand in enumerate(candidates):
        timing = bench.models[i]
        memory = None
        if options.measure_memory:
            if progress:
                progress(f"peak memory of {cand.name} (fresh process)")
            memory = device.peak_memory(cand.path, first.feeds, runs=options.memory_runs, baseline_mb=base)
        fid = compare_outputs(reference, collected.outputs[i]).to_dict()
        acc = None
        if metric:
            res = metric(collected.outputs[i], collected.labels, reference)
            acc = accuracy_entry(res, fp32_metric)
        cov = device.coverage(cand.path).to_dict() if cand.config.get("mode") in ("dynamic", "static") else None
        profile = device.profile_ops(cand.path, first.feeds) if options.profile else None
        variants.append({
            "name": cand.name, "path": str(cand.path), "config": {**cand.config, "session": options.session.to_dict()},
            "size_bytes": model_io.model_size_bytes(cand.path),
            "latency_ms": timing.stats.to_dict(), "latency_samples_ms": list(timing.stats.samples_ms),
            "throughput_per_s": timing.stats.throughput_per_s,
            "peak_memory_mb": memory.peak_rss_mb if memory else float("nan"),
            "memory_delta_mb": memory.delta_mb if memory else None,
            "speedup": timing.speedup.ratio, "speedup_ci": [timing.speedup.ci_low, timing.speedup.ci_high],
            "faster_than_noise": timing.speedup.faster_than_noise, "slower_than_noise": timing.speedup.slower_than_noise,
            "fidelity": fid, "accuracy": acc, "int8_coverage": cov, "notes": list(cand.notes),
            "profile_us_by_op": profile,
        })
    if base is not None:
        for v in variants:
            v["memory_baseline_mb"] = base
    return variants


def _slow_reason(v: dict) -> str:
    from .measure.profile import explain_profile

    cov = v.get("int8_coverage")
    evidence = f" ({explain_profile(v['profile_us_by_op'])})" if v.get("profile_us_by_op") else ""
    if v["config"].get("mode") == "fp32-opt":
        return "the rewritten FP32 graph is not faster on this CPU" + evidence
    return _coverage_reason(cov) + evidence


def _coverage_reason(cov: dict | None) -> str:
    if cov and cov["compute_ops"] and cov["quantized_compute_ops"] < cov["compute_ops"]:
        return (f"only {cov['quantized_compute_ops']}/{cov['compute_ops']} compute ops run as INT8 kernels "
                "after ORT optimization; the rest pay Q/DQ overhead in float")
    if cov and cov["compute_ops"] == 0:
        return "no compute op runs as an INT8 kernel"
    return "INT8 kernels plus quantize/dequantize overhead do not beat FP32 on this CPU"


def recommend(variants: list[dict], budget: Budget, *, min_speedup: float = 1.05) -> tuple[str, str]:
    """Fastest INT8 variant that is within budget and faster than FP32 beyond noise (95% CI above
    1) by at least ``min_speedup``, else fp32. A variant with no INT8 compute op is not INT8.

    Annotates each variant with ``within_budget`` and a plain-words ``verdict``.
    """
    fp32 = variants[0]
    fp32["within_budget"], fp32["verdict"] = True, "reference"
    eligible = []
    for v in variants[1:]:
        ok, why = budget.check(fp32.get("accuracy"), v.get("accuracy"), v["fidelity"])
        v["within_budget"] = ok
        lo, hi = v.get("speedup_ci") or (v["speedup"], v["speedup"])
        cov = v.get("int8_coverage")
        if cov is not None and cov["quantized_compute_ops"] == 0:
            v["verdict"] = (f"nothing quantized: none of the {cov['compute_ops']} compute ops runs as an INT8 kernel "
                            f"(recipe {v['config'].get('mode', '?')} has no op to quantize here)")
        elif not ok:
            v["verdict"] = f"over budget: {why}"
        elif hi < 1.0:
            v["verdict"] = f"slower than FP32 ({v['speedup']:.2f}x): {_slow_reason(v)}"
        elif lo <= 1.0:
            v["verdict"] = f"not faster than FP32 beyond noise ({v['speedup']:.2f}x, 95% CI {lo:.2f}-{hi:.2f})"
        elif v["speedup"] < min_speedup:
            v["verdict"] = f"only {v['speedup']:.2f}x faster (< {min_speedup:g}x): not worth INT8's accuracy risk"
        else:
            v["verdict"] = f"eligible: {v['speedup']:.2f}x faster (95% CI {lo:.2f}-{hi:.2f}); {why}"
            eligible.append(v)
    if not eligible:
        return "fp32", ("no INT8 variant is both within the accuracy budget and faster than FP32 beyond noise "
                        f"by >= {min_speedup:g}x")
    best = max(eligible, key=lambda v: v["speedup"])
    return best["name"], best["verdict"].removeprefix("eligible: ")


def build_report(model_path: Path, model_proto, variants: list[dict], options: RunOptions, *,
                 target: str, notes: list[str], failed: list[dict]) -> dict:
    recommended, reason = recommend(variants, options.budget, min_speedup=options.min_speedup)
    return {
        "schema": "edgequant.report/1",
        "machine": machine_facts(options.session),
        "model": {"path": str(model_path), "sha256": model_io.sha256_file(model_path),
                  "opset": model_io.default_opset(model_proto)},
        "variants": variants,
        "recommended": recommended,
        "recommendation_reason": reason,
        "target": target,
        "budget": {"max_drop": options.budget.max_drop, "max_abs_drop": options.budget.max_abs_drop,
                   "min_agreement": options.budget.min_agreement, "min_cosine": options.budget.min_cosine,
                   "description": options.budget.describe()},
        "failed_variants": failed,
        "notes": notes,
        "memory_baseline_mb": variants[0].get("memory_baseline_mb"),
        "measurement": {"warmup": options.warmup, "runs": options.runs, "interleaved": True,
                        "session": options.session.to_dict()},
    }


def fp32_rewrite_candidate(model_path: Path, proto, out_dir: Path) -> list[Candidate]:
    """The ``fp32-opt`` variant: the model after edgequant's exact FP32 rewrites, if any applied.

    It competes with the INT8 variants on the same rule: on CPUs where INT8 does not pay, a
    faster exact FP32 graph is the honest best answer.
    """
    import onnx

    from .rewrites import apply_exact_rewrites

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(proto)
    notes = apply_exact_rewrites(rewritten)
    if not notes:
        return []
    out = out_dir / f"{model_path.stem}.fp32-opt.onnx"
    model_io.save_model(rewritten, out, inputs=(model_path,))
    return [Candidate("fp32-opt", out, {"mode": "fp32-opt", "rewrites": notes}, list(notes))]


def selective_candidate(model_path: Path, out_dir: Path, config: QuantizeConfig, calib, feeds: dict,
                        options: RunOptions) -> tuple[list[Candidate], str]:
    """Keep INT8 only on the nodes where it measurably pays (``qdq.selective``); explains a miss."""
    from .data import calibration_reader
    from .qdq.selective import quantize_selective
    from .quantize import _static_extra_options, static_qdq_kwargs

    out = out_dir / f"{model_path.stem}.selective.onnx"
    kwargs = static_qdq_kwargs(config, _static_extra_options(config, 13))
    kwargs.pop("nodes_to_exclude", None)
    kwargs.pop("op_types", None)
    summary = quantize_selective(model_path, out, lambda: calibration_reader(calib), feeds=feeds,
                                 base_options=kwargs, session_config=options.session,
                                 time_budget_s=options.selective_budget_s, min_speedup=options.min_speedup)
    if not summary.found:
        return [], f"selective INT8: {summary.reason}"
    if not summary.float_nodes:
        return [], "selective INT8: no node is faster in float, so full INT8 (the static variant) is the best mix"
    note = f"selective INT8 keeps {len(summary.float_nodes)} node(s) in float: {', '.join(summary.float_nodes[:8])}"
    return [Candidate("selective", out, {**config.to_dict(), "mode": "static", "selective": True,
                                         "float_nodes": summary.float_nodes}, [note])], note


def open_sources(model_proto, calib: str | None, eval_spec: str | None, options: RunOptions):
    from .data import open_source

    inputs = model_io.graph_inputs(model_proto)
    calib_src = open_source(calib, inputs, preprocess=options.preprocess, limit=options.calib_limit) if calib else None
    eval_src = open_source(eval_spec, inputs, preprocess=options.preprocess, limit=options.eval_limit) if eval_spec else None
    return calib_src, eval_src


def run_pipeline(model_path: str | Path, out_dir: str | Path, *, calib: str, eval_spec: str | None = None,
                 options: RunOptions | None = None, variants: Sequence[tuple[str, QuantizeConfig]] | None = None,
                 progress: Progress | None = None) -> dict:
    """FP32 -> dynamic -> static: quantize, measure side by side, recommend, write the report."""
    from .report import write_report
    from .targets import resolve_target

    options = options or RunOptions()
    model_path, out_dir = Path(model_path), Path(out_dir)
    if options.metric:
        from .measure.accuracy import load_metric

        load_metric(options.metric)  # a typo fails now, not after quantizing
    proto = model_io.load_model(model_path)
    target = resolve_target(options.target).name
    calib_src, eval_src = open_sources(proto, calib, eval_spec, options)
    notes: list[str] = []
    if eval_src is None:
        eval_src = calib_src
        notes.append("no --eval data: fidelity was measured on the calibration samples (optimistic for static)")
    if getattr(eval_src, "synthetic", False):
        notes.append("evaluation data is synthetic (random): accuracy was not measured, only output fidelity")
    elif not getattr(eval_src, "has_labels", False) and not options.metric:
        notes.append("evaluation data has no labels: the budget is judged on agreement with FP32 outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = list(variants) if variants is not None else default_variants(target)
    made, failed = quantize_variants(model_path, out_dir, specs, calib_src, progress)
    for f in failed:
        notes.append(f"variant {f['name']} failed: {f['error']}")
    if options.selective and calib_src is not None:
        static_cfg = next((c for n, c in specs if c.mode == "static"), make_config("static", target))
        if progress:
            progress("selective INT8: per-node timing of FP32 vs INT8")
        sel, note = selective_candidate(model_path, out_dir, static_cfg, calib_src, next(iter(eval_src)).feeds, options)
        made.extend(sel)
        notes.append(note)
    fp32 = Candidate("fp32", model_path, {"mode": "fp32"})
    made = [*fp32_rewrite_candidate(model_path, proto, out_dir), *made]
    measured = measure_candidates([fp32, *made], eval_src, options, progress)
    report = build_report(model_path, proto, measured, options, target=target, notes=notes, failed=failed)
    write_report(out_dir, report)
    return report
