"""Activations whose 8-bit step is coarser than their typical value stay float where no INT8 kernel reads them.

Mechanism (all-MiniLM-L6-v2, static INT8 at cosine 0.83 once the attention mask no longer sets
the scores' range): BERT's FFN down-projection writes one "massive activation" on the [CLS]
token (one channel reaches 194 while the other values are ~1), and the residual sums and
LayerNorm inputs carry it on. A per-tensor 8-bit range sized for it has a step of ~0.8, larger
than the typical |value| of every other token: their FFN outputs round to zero or one level, and
the error compounds over six layers. Keeping those tensors float lifts cosine 0.83 -> 0.98.

Rule: a quantized activation whose mean |value| (per sample, median over the calibration
samples) spans fewer than ``MIN_LEVELS`` of its own quantization steps loses its Q/DQ pair, but
only where that costs no integer kernel: no MatMul/Conv/Gemm reads it (an INT8 compute op needs
its input quantized) and its producer is not a Conv/Gemm (whose QDQ fusion needs the output Q).
A MatMul then runs as MatMulIntegerToFloat (float output), the elementwise ops and LayerNorm
around it run in float as onnxruntime's CPU kernels would after dequantizing anyway. For CPU
targets only: an accelerator (QNN HTP) runs no float, so there the recipe keeps every Q/DQ.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..qdq.graph import GraphIndex, expose_reduced

DESCRIPTION = ("coarse activations kept float: where the 8-bit step exceeds half the typical |value| and no "
               "INT8 kernel reads the tensor, its Q/DQ pair is dropped")
#: A tensor needs its typical |value| to span at least this many quantization steps.
MIN_LEVELS = 2.0
#: Ops that need a quantized input to run as an integer kernel (their data inputs).
INT8_READERS = frozenset({"MatMul", "Conv", "ConvTranspose", "Gemm", "Attention", "MultiHeadAttention"})
#: Producers whose QDQ fusion needs their output quantized (no float-output integer kernel in ORT).
QUANTIZED_OUTPUT_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm"})


@dataclass
class CoarseTensors:
    """tensor -> (typical |value| in steps) for the tensors kept float; ``checked`` candidates."""

    kept_float: dict[str, float] = field(default_factory=dict)
    checked: int = 0
    samples: int = 0

    def describe(self) -> str:
        if not self.kept_float:
            return f"{DESCRIPTION}: none of {self.checked} candidate tensor(s)"
        worst = min(self.kept_float, key=self.kept_float.get)
        return (f"{DESCRIPTION}: {len(self.kept_float)} of {self.checked} candidate tensor(s) over {self.samples} "
                f"samples; coarsest {worst} (typical |value| {self.kept_float[worst]:.2f} steps)")


@dataclass(frozen=True)
class _Pair:
    tensor: str
    q: onnx.NodeProto
    dqs: tuple[onnx.NodeProto, ...]
    step: float


def _candidates(model: onnx.ModelProto) -> list[_Pair]:
    """Per-tensor activation Q -> DQ pairs whose removal costs no integer kernel."""
    idx = GraphIndex.build(model.graph)
    out = []
    for q in model.graph.node:
        t = q.input[0] if q.op_type == "QuantizeLinear" else None
        if t is None or t in idx.initializers or idx.const(t) is not None or t in idx.graph_outputs:
            continue
        scale = idx.const(q.input[1])
        dqs = idx.consumers.get(q.output[0], [])
        if scale is None or scale.size != 1 or not dqs or q.output[0] in idx.graph_outputs \
                or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        # a DQ that does not undo its Q (qdq.hard_activations folds HardSigmoid's alpha into the Q's
        # scale) cannot go: its readers would see the Q's input, not the value the DQ gives back
        if any(len(d.input) < 2 or idx.const(d.input[1]) is None
               or not np.array_equal(idx.const(d.input[1]), scale) for d in dqs):
            continue
        readers = [r for d in dqs for r in idx.consumers.get(d.output[0], [])]
        producer = idx.producer.get(t)
        if any(r.op_type in INT8_READERS for r in readers) or any(d.output[0] in idx.graph_outputs for d in dqs):
            continue
        if producer is not None and producer.op_type in QUANTIZED_OUTPUT_PRODUCERS:
            continue
        out.append(_Pair(t, q, tuple(dqs), float(scale.ravel()[0])))
    return out


def find_coarse(float_model: str | Path, qdq: onnx.ModelProto, samples: Iterable[Any], device: Any, *,
                limit: int = 64, min_levels: float = MIN_LEVELS) -> tuple[CoarseTensors, list[_Pair]]:
    """The candidate pairs of ``qdq`` whose tensors are too coarse at their step (mean |x| measured
    on ``float_model``, the FP32 graph the quantizer saw, on up to ``limit`` samples)."""
    pairs = _candidates(qdq)
    result = CoarseTensors(checked=len(pairs))
    if not pairs:
        return result, []
    l1: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgequant-coarse-") as tmp:
        exposed = Path(tmp) / "l1.onnx"
        names = expose_reduced(Path(float_model), exposed, {p.tensor for p in pairs}, ops=("ReduceL1", "Size"))
        outputs = [o for pair in names.values() for o in pair]
        for (values,), _ in device.iter_outputs([exposed], itertools.islice(samples, limit), outputs=[outputs]):
            result.samples += 1
            for t, (l1_name, size_name) in names.items():
                size = int(np.asarray(values[size_name]))
                if size:
                    l1.setdefault(t, []).append(float(np.asarray(values[l1_name])) / size)
    coarse = []
    for p in pairs:
        if p.tensor in l1 and p.step > 0:
            levels = float(np.median(l1[p.tensor])) / p.step
            if levels < min_levels:
                result.kept_float[p.tensor] = levels
                coarse.append(p)
    return result, coarse


def drop_pairs(model: onnx.ModelProto, pairs: list[_Pair]) -> int:
    """Readers of each pair's DQ outputs read the float tensor; the Q and DQ nodes go."""
    idx = GraphIndex.build(model.graph)
    drop: set[int] = set()
    for p in pairs:
        for d in p.dqs:
            for r in idx.consumers.get(d.output[0], []):
                for i, name in enumerate(r.input):
                    if name == d.output[0]:
                        r.input[i] = p.tensor
            drop.add(id(d))
        drop.add(id(p.q))
    keep = [n for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # their scales and zero points, unless something else still reads them
    params = {i for p in pairs for n in (p.q, *p.dqs) for i in n.input[1:]}
    used = {i for n in model.graph.node for i in n.input}
    inits = [t for t in model.graph.initializer if t.name not in params or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return len(pairs)


def keep_coarse_float(float_model: str | Path, qdq_model: str | Path, out_model: str | Path,
                      samples: Iterable[Any], device: Any) -> CoarseTensors:
    """Write ``qdq_model`` with its coarse, kernel-free activation Q/DQ pairs dropped to ``out_model``."""
    model = onnx.load(str(qdq_model))
    result, coarse = find_coarse(float_model, model, samples, device)
    drop_pairs(model, coarse)
    onnx.save(model, str(out_model))
    return result
