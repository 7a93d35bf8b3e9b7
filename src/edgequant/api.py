"""The public Python API; the CLI is a thin layer over these functions (parse, call, print).

Example::

    from edgequant import api

    facts = api.inspect("model.onnx")                        # ModelFacts: opset, inputs, ops, size, INT8 coverage
    res = api.quantize("model.onnx", "model.int8.onnx", mode="static", calib="calib.npz")
    bench = api.bench(["model.onnx", "model.int8.onnx"], threads=1, runs=200)
    print([m.speedup.ratio for m in bench.models])
    ev = api.evaluate("model.int8.onnx", "eval.npz", reference="model.onnx")
    print(ev.fidelity.cosine, ev.accuracy)
    report = api.run("model.onnx", "reports/model", calib="calib.npz", eval="eval.npz")
    print(report["recommended"], report["recommendation_reason"])

Nothing here prints: long jobs take ``progress=`` (one-line status messages) instead. Every
typed result has ``to_dict()``, the JSON document the matching command writes.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import model as model_io
from .data import Preprocess
from .errors import EdgequantError
from .inspect import ModelFacts, TensorFacts, model_facts
from .measure.fidelity import Fidelity
from .measure.benchmark import (BenchInput, BenchModel, BenchReport, MemoryBaseline, ThreadRun,
                                bench_models)
from .measure.session import SessionConfig
from .quantize import QuantizeConfig, QuantizeResult, make_config

if TYPE_CHECKING:
    from .devices import DeviceFacts
    from .fleet import FleetEntry, FleetOutcome
    from .pipeline import Budget, RunOptions
    from .tune import TuneOptions

__all__ = [
    "doctor", "devices", "setup_device", "SETUP_DEVICES", "inspect", "export_context", "quantize", "bench", "evaluate", "run", "tune", "qat", "fleet", "fleet_entries",
    "ModelFacts", "TensorFacts", "EvalResult", "FileRef", "BenchReport", "BenchModel", "BenchInput",
    "ThreadRun", "MemoryBaseline", "FleetResult", "Fidelity", "Budget", "RunOptions", "TuneOptions", "SessionConfig",
    "Preprocess", "QuantizeConfig", "QuantizeResult", "make_config", "DEFAULT_THREADS", "DEFAULT_INPUT",
]

Progress = Callable[[str], None]

#: Intra-op threads of every measuring command (eval, bench, run, tune) unless told otherwise:
#: one thread gives the most repeatable timings; 0 lets onnxruntime pick (one per physical core).
DEFAULT_THREADS = 1
#: Bench input when none is given: one synthetic sample (latency only).
DEFAULT_INPUT = "random:1"
#: Peak RSS settles after the first runs (arena growth): memory needs no more than these.
MEMORY_MAX_WARMUP = 5
MEMORY_MAX_RUNS = 20

EVAL_SCHEMA = "edgequant.eval/1"

# Loaded on first use, so that inspect/eval/bench do not import the pipeline and tune machinery.
_LAZY = {"Budget": "pipeline", "RunOptions": "pipeline", "TuneOptions": "tune"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _preprocess(value: Preprocess | str | None) -> Preprocess | None:
    """A Preprocess, parsed from its CLI text form or a .yaml/.json path when given as a string."""
    return Preprocess.parse(value) if isinstance(value, str) else value


# ---- doctor / inspect ---------------------------------------------------------------------------

def doctor() -> dict[str, Any]:
    """This machine's CPU features, onnxruntime version/providers and the target ``auto`` picks."""
    import onnxruntime as ort

    from .targets import RULES, auto_target, detect_cpu

    cpu = detect_cpu()
    target = auto_target(cpu)
    return {
        "cpu": cpu.model, "arch": cpu.arch, "logical_cores": cpu.logical_cores, "isa": list(cpu.isa),
        "vnni": cpu.has_vnni, "amx_int8": cpu.has_amx_int8, "python": platform.python_version(), "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(), "target": target, "why": RULES[target].why,
    }


def devices(ray: str | None = None) -> list[DeviceFacts]:
    """Every device edgequant knows, whether it can be used here (and why not), whether it can time;
    with ``ray`` (``auto`` or an address), also every board on that cluster with its node's CPU facts."""
    from .devices import list_devices

    found = list_devices()
    if ray is not None:
        from .devices._ray import connect
        from .devices.ray_node import RayNodeDevice, device_nodes

        cluster = connect(ray)
        found += [RayNodeDevice(name, address=ray).facts() for name in sorted(device_nodes(cluster))]
    return found


#: Devices that need a set-up step on this machine (qnn-htp needs only `pip install 'edgequant[qnn]'`).
SETUP_DEVICES = ("arm64-emu",)


def setup_device(name: str, *, progress: Progress | None = None) -> DeviceFacts:
    """Build what device ``name`` needs (arm64-emu: the Debian arm64 root); idempotent."""
    from .devices import get_device

    if name not in SETUP_DEVICES:
        raise EdgequantError(f"device {name!r} has no set-up step (set-up exists for: {', '.join(SETUP_DEVICES)})")
    from .devices.arm64_setup import setup

    setup(progress=progress)
    return get_device(name).facts()


def inspect(model: str | Path) -> ModelFacts:
    """Opset, inputs/outputs, op counts, size, sha256; INT8 coverage for a quantized model."""
    return model_facts(model)


# ---- quantize -----------------------------------------------------------------------------------

def quantize(model: str | Path, out: str | Path, *, mode: str, calib: str | None = None,
             target: str = "auto", preprocess: Preprocess | str | None = None, calib_limit: int | None = None,
             on_calib_sample: Callable[[int, int | None], None] | None = None, force: bool = False,
             **overrides: Any) -> QuantizeResult:
    """Quantize ``model`` to ``out``; ``overrides`` are :func:`edgequant.quantize.make_config` options.

    ``out`` may be a folder (the file is ``MODEL.<mode>.onnx`` inside); an existing file is
    replaced only with ``force``. ``on_calib_sample(done, total)`` follows calibration. In dynamic
    mode ``calib`` is optional: its first sample feeds the quick timing of alternative graphs.
    """
    out = Path(out)
    if out.is_dir() or str(out).endswith(("/", "\\")):
        out = out / f"{Path(model).stem}.{mode}.onnx"
    from .fsutil import refuse_overwrite

    refuse_overwrite(out, model)
    if out.exists() and not force:
        raise EdgequantError(f"{out}: already exists; choose another -o path or pass --force to replace it")
    from .quantize import quantize_model

    config = make_config(mode, target, calib_limit=calib_limit, **overrides)
    source = None
    if mode == "static" and not calib:
        raise EdgequantError(f"{model}: static quantization needs calibration data (calib=...)")
    if calib:   # dynamic: its first sample times the alternative graphs (real shapes and masks)
        from .data import open_source

        source = open_source(calib, model_io.graph_inputs(model_io.load_model(model, weights=False)),
                             preprocess=_preprocess(preprocess), limit=calib_limit)
    total = getattr(source, "count", None)
    hook = (lambda i: on_calib_sample(i + 1, total)) if on_calib_sample is not None else None
    return quantize_model(model, out, config, source, on_calib_sample=hook)


def export_context(model: str | Path, out: str | Path, *, check_data: str | None = None) -> Path:
    """Write the QNN EPContext model of a QDQ ``model`` (the HTP binary embedded) and, with
    ``check_data``, check on its first sample that it gives the same outputs as ``model``."""
    from .devices import get_device

    device = get_device("qnn-htp")
    facts = device.facts()
    if not facts.available:
        raise EdgequantError(f"{model}: --export-context needs the qnn-htp device: {facts.why}")
    feeds = None
    if check_data:
        from .data import open_source

        source = open_source(check_data, model_io.graph_inputs(model_io.load_model(model)), limit=1)
        feeds = next(iter(source)).feeds
    return device.export_context(model, out, feeds)


# ---- evaluate -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileRef:
    """A model file as results record it: its path and content hash."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> FileRef:
        return cls(str(path), model_io.sha256_file(path))

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class EvalResult:
    """Output fidelity of ``model`` against ``reference`` and the task metric, on one data set.

    ``accuracy`` is the reports' accuracy entry (metric, value, reference_value, drop, ...), or
    None when no metric applies (see :func:`edgequant.measure.accuracy.choose_metric`).
    """

    model: FileRef
    reference: FileRef | None
    data: str
    samples: int
    has_labels: bool
    synthetic: bool
    limit: int | None
    notes: tuple[str, ...]
    fidelity: Fidelity | None
    accuracy: dict[str, Any] | None
    machine: dict[str, Any]
    session: SessionConfig

    def to_dict(self) -> dict[str, Any]:
        """The ``edgequant.eval/1`` document ``edgequant eval --json`` writes."""
        fid = self.fidelity
        return {"schema": EVAL_SCHEMA, "machine": dict(self.machine), "model": self.model.to_dict(),
                "reference": self.reference.to_dict() if self.reference is not None else None,
                "data": {"spec": self.data, "samples": self.samples, "has_labels": self.has_labels,
                         "synthetic": self.synthetic, "limit": self.limit},
                "session": self.session.to_dict(),
                "fidelity": fid.to_dict() if fid is not None else None,
                "fidelity_per_output": fid.per_output_dict() if fid is not None else None,
                "accuracy": self.accuracy, "notes": list(self.notes)}


def evaluate(model: str | Path, data: str, *, reference: str | Path | None = None, metric: str | None = None,
             preprocess: Preprocess | str | None = None, limit: int | None = None, threads: int = DEFAULT_THREADS,
             session: SessionConfig | None = None, device: str = "cpu", output_roles: dict | None = None,
             progress: Progress | None = None) -> EvalResult:
    """Fidelity of ``model``'s outputs against ``reference``'s and the task metric, on ``data``.

    ``model`` runs on ``device``; the reference always runs on this machine's CPU (exact FP32).

    The metric follows the one rule, :func:`~edgequant.measure.accuracy.choose_metric`; with
    neither a reference nor a metric there is nothing to measure (an error, before any run).
    ``session`` (when given) replaces ``threads``.
    """
    from .data import open_source
    from .devices import get_device, local_cpu
    from .measure.accuracy import choose_metric, load_metric
    from .measure.fidelity import compare_outputs
    from .measure.machine import machine_facts
    from .metrics import accuracy_entry

    cfg = session or SessionConfig(intra_op_threads=threads)
    proto = model_io.load_model(model)
    if reference is not None:
        model_io.load_model(reference, check=False)  # a missing/corrupt reference fails before any run
    if metric:
        load_metric(metric)  # a typo fails now, even where the rule then uses no metric
    source = open_source(data, model_io.graph_inputs(proto), preprocess=_preprocess(preprocess), limit=limit)
    synthetic = source.synthetic
    notes = list(source.notes)
    runner = get_device("cpu" if device == "auto" else device, cfg)
    metric_fn = choose_metric(metric, has_labels=bool(source.has_labels), synthetic=synthetic)
    if reference is None and metric_fn is None:
        if synthetic:
            raise EdgequantError(f"{data}: is synthetic (random) data, on which no task metric is scored, "
                                 "and no --reference was given: nothing to measure")
        raise EdgequantError(f"{data}: has no labels and no --reference or --metric was given: "
                             "nothing to measure")
    if synthetic:
        notes.append("synthetic data: task accuracy is not measured" + (
            "; fidelity is on random inputs" if reference is not None else ""))

    paths = [str(reference), str(model)] if reference is not None else [str(model)]
    _say(progress, f"running {len(paths)} model(s) on {source.count or '?'} sample(s)")
    if runner.kind == "cpu":
        got = runner.outputs(paths, source)
        ref_out = got.outputs[0] if reference is not None else None
        cand_out = got.outputs[-1]
    else:
        got = runner.outputs([str(model)], source)
        cand_out = got.outputs[0]
        ref_out = local_cpu(cfg).outputs([str(reference)], source).outputs[0] if reference is not None else None
        notes.append(f"{model} ran on {runner.name} ({runner.facts().why}); the reference on this machine's CPU")
    from .measure.padding import describe as describe_padding
    from .measure.padding import padding_masks
    from .measure.roles import detect_roles

    roles = {n: r.role for n, r in detect_roles(proto, output_roles).items()}
    padding = padding_masks(source, ref_out) if ref_out is not None else {}
    if padding:
        notes.append(describe_padding(padding))
    fidelity = compare_outputs(ref_out, cand_out, roles, padding=padding) if ref_out is not None else None
    accuracy = None
    if metric_fn is not None:
        ref_result = metric_fn(ref_out, got.labels, ref_out) if ref_out is not None else None
        accuracy = accuracy_entry(metric_fn(cand_out, got.labels, ref_out), ref_result)
    return EvalResult(model=FileRef.of(model), reference=FileRef.of(reference) if reference is not None else None,
                      data=str(data), samples=got.count, has_labels=got.labels is not None, synthetic=synthetic,
                      limit=limit, notes=tuple(notes), fidelity=fidelity, accuracy=accuracy,
                      machine=machine_facts(cfg), session=cfg)


# ---- bench --------------------------------------------------------------------------------------

def bench(models: Sequence[str | Path], *, input: str | None = None, threads: int = DEFAULT_THREADS,
          warmup: int = 10, runs: int = 100, min_time_s: float = 0.5, session: SessionConfig | None = None,
          threads_sweep: Sequence[int] | None = None, memory: bool = False,
          preprocess: Preprocess | str | None = None, progress: Progress | None = None,
          burst: int = 1) -> BenchReport:
    """Time ``models`` interleaved in one process; speedups are relative to the first model.

    ``input`` defaults to one synthetic sample. ``threads_sweep`` repeats the run at each
    intra-op thread count (replacing ``threads``; ``session``, when given, replaces both its
    other settings and ``threads``). ``memory`` adds each model's peak RSS in a fresh process.
    ``min_time_s``: fast models get more than ``runs`` rounds, until the rounds last that long.
    ``burst`` > 1: each model runs that many times in a row per round and its steady state (the
    median after the first) is timed, not its run right after another model.
    """
    from dataclasses import replace

    from .devices import local_cpu
    from .measure.feeds import SourceFeeds
    from .measure.machine import machine_facts

    if not models:
        raise EdgequantError("no models to benchmark")
    for m in models:
        p = Path(m)
        if not p.is_file():
            raise EdgequantError(f"{m}: no such file" if not p.exists() else f"{m}: not a file")
    if threads_sweep is not None and (not threads_sweep or any(t < 1 for t in threads_sweep)):
        raise EdgequantError(f"thread counts must be >= 1, got {list(threads_sweep)!r}")
    base_cfg = session or SessionConfig(intra_op_threads=threads)
    counts = list(threads_sweep) if threads_sweep else [base_cfg.intra_op_threads]
    cfg = base_cfg.with_(intra_op_threads=counts[0])
    spec = input or DEFAULT_INPUT
    feeds = SourceFeeds(spec, preprocess=_preprocess(preprocess))
    paths = [str(m) for m in models]

    sweep: list[ThreadRun] = []
    sizes: dict[str, int] = {}
    for t in counts:
        _say(progress, f"timing {len(paths)} model(s) interleaved, {t} thread(s): {warmup} warm-up, >= {runs} rounds")
        res = local_cpu(cfg.with_(intra_op_threads=t)).time_interleaved(paths, feeds, warmup=warmup, runs=runs,
                                                                        min_seconds=min_time_s, burst=burst)
        # after the sessions exist: onnxruntime has already rejected unreadable models by name
        sizes = sizes or {p: model_io.model_size_bytes(p) for p in paths}
        sweep.append(ThreadRun(threads=t, wall_s=res.wall_s, models=bench_models(res, sizes)))

    baseline = None
    if memory:
        device = local_cpu(cfg)
        mem_warmup, mem_runs = min(warmup, MEMORY_MAX_WARMUP), min(runs, MEMORY_MAX_RUNS)
        _say(progress, "peak memory: bare onnxruntime baseline (fresh process)")
        base_mb = device.baseline_memory()
        measured = []
        for m in sweep[0].models:
            _say(progress, f"peak memory of {m.path} (fresh process)")
            mem = device.peak_memory(m.path, feeds.by_path[m.path], warmup=mem_warmup, runs=mem_runs,
                                     baseline_mb=base_mb)
            measured.append(replace(m, memory=mem))
        sweep[0] = replace(sweep[0], models=tuple(measured))
        baseline = MemoryBaseline(baseline_rss_mb=base_mb, warmup=mem_warmup, runs=mem_runs)

    return BenchReport(machine=machine_facts(cfg),
                       input=BenchInput(spec=spec, default=input is None, synthetic=bool(feeds.synthetic),
                                        notes=tuple(feeds.notes)),
                       session=cfg, warmup=warmup, runs=len(sweep[0].models[0].latency.samples_ms),
                       sweep=tuple(sweep), swept=bool(threads_sweep),
                       memory=baseline, burst=burst)


# ---- run / tune / fleet -------------------------------------------------------------------------

def run(model: str | Path, out_dir: str | Path, *, calib: str, eval: str | None = None,
        options: RunOptions | None = None, progress: Progress | None = None) -> dict:
    """FP32 -> dynamic -> static with the report (report.json + report.html in ``out_dir``)."""
    from .pipeline import run_pipeline

    return run_pipeline(model, out_dir, calib=calib, eval_spec=eval, options=options, progress=progress)


def tune(model: str | Path, out_dir: str | Path, *, calib: str, eval: str | None = None,
         options: TuneOptions | None = None, ray: str | None = None, progress: Progress | None = None) -> dict:
    """Search recipes for the fastest INT8 model within budget; the report (with its search trace).

    ``ray``: ``auto`` or a cluster address: candidates are quantized, and on a CPU target their
    quality measured, as Ray tasks, at most ``options.workers`` at a time (timing stays here)."""
    from dataclasses import replace

    from .tune import TuneOptions, run_tune

    options = options or TuneOptions()
    if ray is not None:
        from .scaleout.tune_tasks import ray_quantize_batch

        options = replace(options, quantizer=ray_quantize_batch(ray, max_concurrency=options.workers))
    return run_tune(model, out_dir, calib=calib, eval_spec=eval, options=options, progress=progress)


def qat(model: str | Path, out_dir: str | Path, *, calib: str, eval: str | None = None, target: str = "auto",
        per_channel: bool | None = None, epochs: int = 10, time_budget_min: float | None = None,
        metric: str | None = None, preprocess: Preprocess | str | None = None, calib_limit: int | None = None,
        eval_limit: int | None = None, lr: float = 1e-2, batch_size: int = 8, threads: int = 0,
        force: bool = False, progress: Progress | None = None) -> dict:
    """Quantization-aware training from the ONNX file (needs ``edgequant[qat]``): the target's static
    QDQ model, trained by distillation from ``model``'s FP32 outputs on the ``calib`` samples (no
    labels), exported to ``out_dir``/model.int8.onnx; returns the qat.json record (loss curve,
    fidelity and ``metric`` before/after on ``eval``, or on a held-out part of ``calib``)."""
    from .qat import train_qat

    return train_qat(model, out_dir, calib=calib, eval=eval, target=target, per_channel=per_channel, epochs=epochs,
                     time_budget_min=time_budget_min, metric=metric, preprocess=_preprocess(preprocess),
                     calib_limit=calib_limit, eval_limit=eval_limit, lr=lr, batch_size=batch_size, threads=threads,
                     force=force, progress=progress)


@dataclass(frozen=True)
class FleetResult:
    """One outcome per fleet entry and the summary written to ``fleet.json``."""

    outcomes: tuple[FleetOutcome, ...]
    summary: dict[str, Any]

    @property
    def failed(self) -> tuple[FleetOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


def fleet_entries(fleet_yaml: str | Path) -> list[FleetEntry]:
    """Validate ``fleet_yaml`` and return its entries, running nothing."""
    from .fleet import load_fleet

    return load_fleet(fleet_yaml)


def fleet(fleet_yaml: str | Path, out_dir: str | Path, *, force: bool = False, ray: str | None = None,
          progress: Callable[[str, str], None] | None = None) -> FleetResult:
    """Run every model of ``fleet_yaml`` (a failure does not stop the others); ``progress(name, msg)``.

    ``ray``: ``auto`` or a cluster address: each model runs as a Ray task (:mod:`edgequant.scaleout`)."""
    from .fleet import fleet_summary, run_fleet

    executor = None
    if ray is not None:
        from .scaleout import ray_executor

        executor = ray_executor(ray)
    outcomes = run_fleet(fleet_yaml, out_dir, force=force, progress=progress, executor=executor)
    return FleetResult(outcomes=tuple(outcomes), summary=fleet_summary(outcomes))
