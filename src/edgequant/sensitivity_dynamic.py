"""Which weight MatMul/Gemm nodes dynamic INT8 hurts most: the ranking for tune's dynamic fallback.

Dynamic quantization quantizes each weight MatMul's input per call, to uint8 over that tensor's
own min..max (onnxruntime's DynamicQuantizeLinear). The input whose values are most long-tailed
loses most: a transformer's FFN output projection reads GELU outputs whose few large values set
the step for all. The static sensitivity analysis ranks nodes by *static* error (fixed ranges,
attention and LayerNorm inputs), which does not find them: on the HF BertModel export, leaving
its top 8 MatMuls float did not move the output cosine (0.9894 -> 0.9897), while the first node of
this ranking alone gave 0.9914 (AMX Xeon, 32 padded texts). Measured here: the SQNR of each
input under that quantization, on a few calibration samples, in the FP32 graph; lowest first.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx

from . import model as model_io
from .qdq.graph import expose_tensors
from .qmath import dequantize, params_for, quantize
from .sensitivity import analysis_device

DYNAMIC_OPS = ("MatMul", "Gemm")


def _dynamic_roundtrip(x: np.ndarray) -> np.ndarray:
    """x through DynamicQuantizeLinear and back: uint8 over [min(x, 0), max(x, 0)]."""
    qp = params_for(x, "uint8")
    return dequantize(quantize(x, qp), qp)


def rank_dynamic_inputs(model_path: str | Path, calibration, *, limit: int = 8) -> list[tuple[str, float]]:
    """(node name, input SQNR in dB) for each weight MatMul/Gemm of ``model_path``, lowest first;
    empty for a model over 2 GiB (its intermediate tensors are not collected)."""
    model_path = Path(model_path)
    if model_io.is_large(model_path):
        return []
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in DYNAMIC_OPS and len(n.input) > 1 and n.input[1] in weights]
    if not nodes:
        return []
    inputs = list(dict.fromkeys(n.input[0] for n in nodes))
    signal = dict.fromkeys(inputs, 0.0)
    noise = dict.fromkeys(inputs, 0.0)
    with tempfile.TemporaryDirectory(prefix="edgequant-dyn-") as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        expose_tensors(model_path, exposed, inputs)
        device = analysis_device(threads=1)     # graph optimization off: the tensors keep their names
        graph_inputs = {i.name for i in model.graph.input}
        wanted = [name for name in inputs if name not in graph_inputs]
        runs = device.iter_outputs([exposed], itertools.islice(calibration, limit), [wanted])
        for sample, ((values,), _label) in zip(itertools.islice(calibration, limit), runs):
            for name in inputs:
                x = np.asarray(values[name] if name in values else sample.feeds[name], np.float64)
                signal[name] += float(np.sum(x * x))
                noise[name] += float(np.sum((x - _dynamic_roundtrip(x)) ** 2))
    sqnr = {name: 10.0 * np.log10(signal[name] / noise[name]) if noise[name] > 0 else float("inf")
            for name in inputs}
    return sorted(((n.name, float(sqnr[n.input[0]])) for n in nodes), key=lambda t: t[1])
