"""FP32 -> dynamic -> static, measured side by side on a device, then recommended.

Data flows one way: sources -> quantized candidates -> device measurements (outputs, latency,
memory, coverage) -> typed :class:`~edgequant.variant.Variant` records -> recommendation
(:mod:`edgequant.verdict`) -> report dict. ``tune`` and ``fleet`` reuse these steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import model as model_io
from .alternatives import default_alternatives
from .data import DataSource
from .errors import EdgequantError
from .measure.machine import machine_facts
from .measure.session import SessionConfig
from .metrics import accuracy_entry
from .quantize import QuantizeConfig, QuantizeResult, make_config, quantize_model
from .variant import Candidate, KnownQuality, Variant
from .verdict import Budget, recommend

__all__ = ["Budget", "Candidate", "KnownQuality", "RunOptions", "RunSetup", "Variant", "build_report",
           "measure_candidates", "open_run", "recommend", "run_pipeline"]

Progress = Callable[[str], None]


def _say(progress: Progress | None, msg: str) -> None:
    if progress:
        progress(msg)


@dataclass(frozen=True)
class RunOptions:
    target: str = "auto"
    budget: Budget = field(default_factory=Budget)
    session: SessionConfig = field(default_factory=lambda: SessionConfig(intra_op_threads=1))
    warmup: int = 10
    runs: int = 100
    # fast models get more rounds, until the timed rounds last this long (Device.time_interleaved)
    min_time_s: float = 0.5
    # runs in a row per variant and round, timed after the first: 1 = each run right after another
    # model's (a pipeline of models per frame); > 1 = a model's steady state (a stream it serves alone)
    burst: int = 1
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
    device: str = "auto"                  # where variants run (edgequant.devices); auto: the target's own
    output_roles: dict = field(default_factory=dict)   # output name -> role (measure.roles), overrides

    def make_device(self):
        """The device every measurement of this run goes through, with this run's session."""
        from .devices import get_device

        return get_device("cpu" if self.device == "auto" else self.device, self.session)

    def make_devices(self):
        """(device, host, timer): where variants run; this machine's CPU, which runs the FP32
        reference; and where time is real (the device when it can time, else the host)."""
        from .devices import local_cpu

        device = self.make_device()
        host = device if device.kind == "cpu" else local_cpu(self.session)
        return device, host, device if device.facts().can_time else host


def default_variants(target: str, model=None) -> list[tuple[str, QuantizeConfig]]:
    """The seed's pipeline (dynamic, static) and the alternative graphs this model and target may
    run faster as (:func:`edgequant.alternatives.default_alternatives`, shared with ``tune``); the
    full interleaved timing and the budget decide between them."""
    return [(alt.name, alt.config(target)) for alt in default_alternatives(target, model)]


def quantize_variants(model_path: Path, out_dir: Path, specs: Sequence[tuple[str, QuantizeConfig]],
                      calib, progress: Progress | None = None) -> tuple[list[Candidate], list[dict]]:
    """Quantize each spec; a failing recipe is recorded, not fatal."""
    made, failed = [], []
    for name, config in specs:
        _say(progress, f"quantizing {name}")
        out = out_dir / f"{model_path.stem}.{name}.onnx"
        try:
            # dynamic: the data's first sample feeds the timing of alternative graphs (real shapes)
            res: QuantizeResult = quantize_model(model_path, out, config, calib)
        except EdgequantError as exc:
            failed.append({"name": name, "config": config.to_dict(), "error": str(exc)})
            continue
        made.append(Candidate(name, out, config.to_dict(), [*res.warnings, *res.notes]))
    return made, failed


def _outputs(candidates: Sequence[Candidate], eval_source: DataSource, device, host):
    """Every candidate's outputs: FP32 models on the host CPU (the reference must be exact FP32),
    quantized ones on the device, except those whose quality is known already (None for them).
    One pass per machine over the (re-iterable) source."""
    todo = [i for i, c in enumerate(candidates) if c.known is None]
    on_device = [i for i in todo if device is not host and candidates[i].mode in ("dynamic", "static")]
    on_host = [i for i in todo if i not in on_device]
    got = host.outputs([str(candidates[i].path) for i in on_host], eval_source)
    outputs: list = [None] * len(candidates)
    for k, i in enumerate(on_host):
        outputs[i] = got.outputs[k]
    if on_device:
        dev = device.outputs([str(candidates[i].path) for i in on_device], eval_source)
        for k, i in enumerate(on_device):
            outputs[i] = dev.outputs[k]
    return outputs, got.labels


class _Lost:
    """A remote device (a board on a Ray cluster) that vanishes mid-run: what it had not measured
    yet is measured on this machine's CPU instead, each variant's ``measured_on`` says so, and a
    note names what was lost; the report still comes out. Local devices' errors pass through."""

    def __init__(self, device, host, notes: list[str] | None) -> None:
        self.device, self.host, self.notes, self.lost = device, host, notes, False

    def use(self, on_device):
        return self.host if self.lost else on_device

    def call(self, what: str, on_device, fn):
        try:
            return fn(self.use(on_device))
        except EdgequantError as exc:
            if self.lost or on_device is self.host or on_device.location() is None:
                raise
            self.lost = True
            if self.notes is not None:
                self.notes.append(f"{self.device.name} was lost while measuring {what} ({exc}); that and everything "
                                  "after it was measured on this machine's CPU, not on the board")
            return fn(self.host)


def measure_candidates(candidates: Sequence[Candidate], eval_source: DataSource, options: RunOptions,
                       progress: Progress | None = None, notes: list[str] | None = None) -> list[Variant]:
    """Measure every candidate (first = FP32 reference) the same way: outputs, coverage and placement
    on the run's device; latency, memory and profiles where time is real (the device, or else
    this machine's CPU, and each variant records which). ``notes`` receives what a lost remote
    device could not measure."""
    from .measure.accuracy import choose_metric
    from .measure.fidelity import compare_outputs
    from .measure.padding import describe as describe_padding
    from .measure.padding import padding_masks

    device, host, timer = options.make_devices()
    lost = _Lost(device, host, notes)
    paths = [str(c.path) for c in candidates]
    known = sum(c.known is not None for c in candidates)
    _say(progress, f"running {len(paths) - known} models on {eval_source.count or '?'} samples ({device.name})"
                   + (f"; {known} measured there by the search already" if known else ""))
    outputs, labels = lost.call("outputs", device, lambda d: _outputs(candidates, eval_source, d, host))
    outputs_on = lost.use(device)
    reference = outputs[0]
    roles = output_roles(candidates[0].path, options)
    padding = padding_masks(eval_source, reference)
    if padding and notes is not None:
        notes.append(describe_padding(padding))
    metric = choose_metric(options.metric, has_labels=labels is not None, synthetic=eval_source.synthetic)
    fp32_metric = metric(reference, labels, reference) if metric else None

    _say(progress, f"timing {len(paths)} models interleaved (>= {options.runs} rounds, >= {options.min_time_s:g} s, "
                   f"{timer.name})")
    first = next(iter(eval_source))
    bench = lost.call("latency", timer, lambda t: t.time_interleaved(paths, first.feeds, warmup=options.warmup,
                                                                    runs=options.runs, min_seconds=options.min_time_s,
                                                                    burst=options.burst))
    timed_on = lost.use(timer)
    base = lost.call("memory", timer, lambda t: t.baseline_memory()) if options.measure_memory else None
    # memory is measured over the baseline of the machine that measures it: all on one machine
    memory_on = lost.use(timer)
    memories = [None] * len(candidates)
    if options.measure_memory:
        _say(progress, f"peak memory of {len(candidates)} models (a fresh process each)")
        memories = lost.call("memory", memory_on, lambda t: t.peak_memories(
            paths, first.feeds, runs=options.memory_runs, baseline_mb=base if t is memory_on else None))
    variants = []
    for i, cand in enumerate(candidates):
        memory = memories[i]
        if outputs[i] is None:     # measured by the search on this device and data: not run again
            fidelity, acc, outputs_by = cand.known.fidelity, cand.known.accuracy, cand.known.device
        else:
            fidelity = compare_outputs(reference, outputs[i], roles, padding=padding)
            acc = accuracy_entry(metric(outputs[i], labels, reference), fp32_metric) if metric else None
            outputs_by = None
        quantized = cand.mode in ("dynamic", "static")
        placement = lost.call("placement", device, lambda d: d.placement(cand.path)) if quantized else None
        variants.append(Variant(
            name=cand.name, path=str(cand.path), config={**cand.config, "session": options.session.to_dict()},
            size_bytes=model_io.model_size_bytes(cand.path),
            latency=bench.models[i].stats, speed=bench.models[i].speedup,
            fidelity=fidelity, accuracy=acc,
            coverage=lost.call("coverage", device, lambda d: d.coverage(cand.path)) if quantized else None,
            memory=memory, notes=list(cand.notes),
            profile_us_by_op=(lost.call("per-op profiles", timed_on, lambda t: t.profile_ops(cand.path, first.feeds))
                              if options.profile else None),
            placement=placement.to_dict() if placement is not None else None,
            measured_on={"outputs": outputs_by or (outputs_on.name if quantized else host.name),
                         "latency": timed_on.name}))
    return variants


def output_roles(model_path: Path | str, options: RunOptions) -> dict[str, str]:
    """Each output's role (measure.roles), the run's overrides applied."""
    import onnx

    from .measure.roles import detect_roles

    model = onnx.load(str(model_path), load_external_data=False)
    return {n: r.role for n, r in detect_roles(model, options.output_roles).items()}


def build_report(model_path: Path, model_proto, variants: list[Variant], options: RunOptions, *,
                 target: str, notes: list[str], failed: list[dict]) -> dict:
    """Recommend (annotating the variants) and serialize: report.json's object."""
    from .measure.roles import detect_roles

    device = options.make_device()
    facts = device.facts()
    device_entry = facts.report_entry()
    if device.location() is not None:     # a remote board: which node measured, and its CPU
        device_entry["node"] = device.location()
    # speed is judged where time is real, and only if every variant was timed on the device itself
    judge_speed = ((facts.can_time or facts.kind == "cpu")
                   and all((v.measured_on or {}).get("latency", facts.name) == facts.name for v in variants))
    recommended, reason = recommend(variants, options.budget, min_speedup=options.min_speedup,
                                    judge_speed=judge_speed, device=facts.name)
    if not judge_speed and not facts.can_time:
        notes = [*notes, f"outputs, accuracy and placement were measured on {facts.name} ({facts.why}); its time "
                 "is not latency, so latency, memory and speedups are this machine's CPU running the same "
                 "files, and the recommendation does not depend on them"]
    return {
        "schema": "edgequant.report/1",
        "machine": machine_facts(options.session),
        "model": {"path": str(model_path), "sha256": model_io.sha256_file(model_path),
                  "opset": model_io.default_opset(model_proto)},
        "variants": [v.to_dict() for v in variants],
        "recommended": recommended,
        "recommendation_reason": reason,
        "target": target,
        "device": device_entry,
        "output_roles": {n: r.to_dict() for n, r in detect_roles(model_proto, options.output_roles).items()},
        "budget": {"max_drop": options.budget.max_drop, "max_abs_drop": options.budget.max_abs_drop,
                   "min_agreement": options.budget.agreement, "min_cosine": options.budget.min_cosine,
                   "description": options.budget.describe()},
        "failed_variants": failed,
        "notes": notes,
        "memory_baseline_mb": variants[0].memory.baseline_rss_mb if variants[0].memory else None,
        # runs: the rounds actually timed (more than asked for where a round is short: min_time_s)
        "measurement": {"warmup": options.warmup, "runs": len(variants[0].latency.samples_ms) if variants
                        else options.runs, "runs_asked": options.runs, "min_time_s": options.min_time_s,
                        "interleaved": True, "burst": options.burst, "session": options.session.to_dict()},
    }


def fp32_rewrite_candidate(model_path: Path, proto, out_dir: Path, target: str = "auto") -> list[Candidate]:
    """The ``fp32-opt`` variant: the model after edgequant's exact FP32 rewrites, if any applied.

    It competes with the INT8 variants on the same rule: on CPUs where INT8 does not pay, a
    faster exact FP32 graph is the honest best answer.
    """
    import onnx

    from .rewrites import EXACT_REWRITES, FLOAT_OP_REWRITES, apply_exact_rewrites
    from .targets import resolve_target

    if not resolve_target(target).exact_rewrites:
        return []  # an NPU compiles its own graph: CPU speed rewrites are not offered there
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(proto)
    notes = apply_exact_rewrites(rewritten, EXACT_REWRITES + FLOAT_OP_REWRITES)
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
    from .quantize import static_qdq_kwargs

    out = out_dir / f"{model_path.stem}.selective.onnx"
    kwargs = static_qdq_kwargs(config)
    kwargs.pop("nodes_to_exclude", None)
    kwargs.pop("op_types", None)
    summary = quantize_selective(model_path, out, lambda: calibration_reader(calib), feeds=feeds,
                                 base_options=kwargs, device=options.make_device(),
                                 time_budget_s=options.selective_budget_s, min_speedup=options.min_speedup)
    if not summary.found:
        return [], f"selective INT8: {summary.reason}"
    if not summary.float_nodes:
        return [], "selective INT8: no node is faster in float, so full INT8 (the static variant) is the best mix"
    note = f"selective INT8 keeps {len(summary.float_nodes)} node(s) in float: {', '.join(summary.float_nodes[:8])}"
    return [Candidate("selective", out, {**config.to_dict(), "mode": "static", "selective": True,
                                         "float_nodes": summary.float_nodes}, [note])], note


@dataclass
class RunSetup:
    """What run and tune both start from: the checked model, its target, the opened data."""

    model_path: Path
    out_dir: Path
    proto: object                  # onnx.ModelProto
    target: str
    calib: DataSource | None
    eval: DataSource
    eval_spec: str | None
    notes: list[str]
    options: RunOptions            # with the device resolved (``auto`` -> the target's own)


def open_run(model_path: str | Path, out_dir: str | Path, calib: str | None, eval_spec: str | None,
             options: RunOptions) -> RunSetup:
    """The shared opening of run and tune: fail fast on a bad metric, model or data, before any work."""
    from .data import open_source
    from .targets import resolve_target

    if options.metric:
        from .measure.accuracy import load_metric

        load_metric(options.metric)  # a typo fails now, not after quantizing
    from .devices import resolve_device

    model_path, out_dir = Path(model_path), Path(out_dir)
    proto = model_io.load_model(model_path)
    target = resolve_target(options.target).name
    device, device_note = resolve_device(options.device, target)
    options = replace(options, device=device)
    inputs = model_io.graph_inputs(proto)
    calib_src = open_source(calib, inputs, preprocess=options.preprocess, limit=options.calib_limit) if calib else None
    eval_src = open_source(eval_spec, inputs, preprocess=options.preprocess, limit=options.eval_limit) if eval_spec else None
    notes: list[str] = [device_note] if device_note else []
    if eval_src is None:
        if calib_src is None:
            raise EdgequantError(f"{model_path}: needs calibration data (--calib SRC)")
        eval_src, eval_spec = calib_src, calib
        notes.append("no --eval data: accuracy and fidelity were measured on the calibration samples "
                     "(optimistic for static)")
    if eval_src.synthetic:
        notes.append("evaluation data is synthetic (random): accuracy was not measured, only output fidelity")
    elif not eval_src.has_labels and not options.metric:
        notes.append("evaluation data has no labels: the budget is judged on agreement with FP32 outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    return RunSetup(model_path, out_dir, proto, target, calib_src, eval_src, eval_spec, notes, options)


def run_pipeline(model_path: str | Path, out_dir: str | Path, *, calib: str, eval_spec: str | None = None,
                 options: RunOptions | None = None, variants: Sequence[tuple[str, QuantizeConfig]] | None = None,
                 progress: Progress | None = None) -> dict:
    """FP32 -> dynamic -> static: quantize, measure side by side, recommend, write the report."""
    from .report import write_report

    options = options or RunOptions()
    setup = open_run(model_path, out_dir, calib, eval_spec, options)
    options = setup.options
    model_path, out_dir, proto, target = setup.model_path, setup.out_dir, setup.proto, setup.target
    calib_src, eval_src, notes = setup.calib, setup.eval, setup.notes
    specs = list(variants) if variants is not None else default_variants(target, proto)
    made, failed = quantize_variants(model_path, out_dir, specs, calib_src, progress)
    for f in failed:
        notes.append(f"variant {f['name']} failed: {f['error']}")
    if options.selective and calib_src is not None:
        static_cfg = next((c for n, c in specs if c.mode == "static"), make_config("static", target))
        _say(progress, "selective INT8: per-node timing of FP32 vs INT8")
        sel, note = selective_candidate(model_path, out_dir, static_cfg, calib_src, next(iter(eval_src)).feeds, options)
        made.extend(sel)
        notes.append(note)
    fp32 = Candidate("fp32", model_path, {"mode": "fp32"})
    made = [*fp32_rewrite_candidate(model_path, proto, out_dir, target), *made]
    measured = measure_candidates([fp32, *made], eval_src, options, progress, notes)
    report = build_report(model_path, proto, measured, options, target=target, notes=notes, failed=failed)
    write_report(out_dir, report)
    return report
