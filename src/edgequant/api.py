"""The public Python API; the CLI is a thin layer over these functions.

Example::

    from edgequant import api

    info = api.inspect("model.onnx")                         # opset, inputs, ops, size, INT8 coverage
    res = api.quantize("model.onnx", "model.int8.onnx", mode="static", calib="calib.npz")
    bench = api.bench(["model.onnx", "model.int8.onnx"], threads=1, runs=200)
    report = api.run("model.onnx", "reports/model", calib="calib.npz", eval="eval.npz")
    print(report["recommended"], report["recommendation_reason"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import model as model_io
from .measure.session import SessionConfig
from .pipeline import Budget, RunOptions, run_pipeline
from .quantize import QuantizeConfig, QuantizeResult, make_config, quantize_model

__all__ = ["inspect", "quantize", "bench", "evaluate", "run", "Budget", "RunOptions", "SessionConfig",
           "QuantizeConfig", "QuantizeResult", "make_config"]


def inspect(model: str | Path) -> dict:
    """Opset, inputs/outputs, op counts, size, sha256; INT8 coverage for a quantized model."""
    from .cli.inspect_cmd import inspect_facts

    return inspect_facts(Path(model))


def quantize(model: str | Path, out: str | Path, *, mode: str, calib: str | None = None,
             target: str = "auto", preprocess=None, calib_limit: int | None = None, **overrides) -> QuantizeResult:
    """Quantize ``model`` to ``out``; ``overrides`` are :func:`edgequant.quantize.make_config` options."""
    config = make_config(mode, target, calib_limit=calib_limit, **overrides)
    source = None
    if mode == "static":
        from .data import open_source

        if not calib:
            from .errors import EdgequantError
            raise EdgequantError(f"{model}: static quantization needs calibration data (calib=...)")
        source = open_source(calib, model_io.graph_inputs(model_io.load_model(model)), preprocess=preprocess,
                             limit=calib_limit)
    return quantize_model(model, out, config, source)


def bench(models: Sequence[str | Path], *, input: str = "random:1", threads: int = 1, warmup: int = 10,
          runs: int = 100, session: SessionConfig | None = None):
    """Interleaved latency of ``models`` (speedups relative to the first)."""
    from .devices import local_cpu
    from .measure.feeds import SourceFeeds

    cfg = session or SessionConfig(intra_op_threads=threads)
    return local_cpu(cfg).time_interleaved([str(m) for m in models], SourceFeeds(input), warmup=warmup, runs=runs)


def evaluate(model: str | Path, data: str, *, reference: str | Path | None = None, metric: str | None = None,
             preprocess=None, limit: int | None = None, session: SessionConfig | None = None) -> dict:
    """Fidelity against ``reference`` and the task metric (when labels or a metric exist)."""
    from .data import open_source
    from .measure.accuracy import load_metric
    from .devices import local_cpu
    from .measure.fidelity import compare_outputs

    cfg = session or SessionConfig()
    proto = model_io.load_model(model)
    source = open_source(data, model_io.graph_inputs(proto), preprocess=preprocess, limit=limit)
    paths = [str(reference), str(model)] if reference else [str(model)]
    collected = local_cpu(cfg).outputs(paths, source)
    out: dict = {"model": str(model), "samples": collected.count}
    ref_out = collected.outputs[0] if reference else None
    cand = collected.outputs[-1]
    if ref_out is not None:
        out["fidelity"] = compare_outputs(ref_out, cand).to_dict()
    if metric or collected.labels is not None:
        res = load_metric(metric or "top1")(cand, collected.labels, ref_out)
        out["metric"] = {"name": res.name, "value": res.value, "higher_is_better": res.higher_is_better,
                         "details": res.details}
    return out


def run(model: str | Path, out_dir: str | Path, *, calib: str, eval: str | None = None,
        options: RunOptions | None = None) -> dict:
    """FP32 -> dynamic -> static with the report (report.json + report.html in ``out_dir``)."""
    return run_pipeline(model, out_dir, calib=calib, eval_spec=eval, options=options)
