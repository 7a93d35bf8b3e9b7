"""SmoothQuant-style migration (Xiao et al. 2023) for MatMul/Gemm inputs with outlier channels.

Why: in transformers a few input channels of the linear layers (the same ones on every token)
are 10-100x larger than the rest; one per-tensor activation scale then leaves the other channels
a few levels. Per input channel k of activation X feeding linear layers with constant weights W:
X[..., k] / s_k and W[k, :] * s_k keep X W unchanged, and s_k = max|X_k|^alpha / max|W_k|^(1 -
alpha) (alpha 0.5) moves half of the outlier's range (in log scale) into the weights, which are
quantized per output channel anyway. The division is folded into X's producer, so no op is added
and the transform is exact in FP32: LayerNormalization (scale and bias / s), its decomposed form
(Mul by gamma then Add beta), or a MatMul/Gemm with constant weights (+ Add bias) whose output
columns are divided. Every consumer of X must be such a linear layer (they all see X / s); other
activations are left alone. max|X_k| is a running maximum over the calibration samples (one
vector per tensor: memory does not grow with the number of samples).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..qdq.graph import GraphIndex, attribute, expose_tensors, use_counts

DESCRIPTION = ("SmoothQuant: outlier input channels of MatMul/Gemm layers are divided by s_k (folded into the "
               "producer: LayerNorm or a linear layer) and the weights' rows multiplied by s_k")
ALPHA = 0.5


@dataclass
class _Site:
    x: str                                     # the activation that is smoothed
    consumers: list[onnx.NodeProto]            # MatMul/Gemm reading it as input A
    divide: list[tuple[str, int]]              # (initializer, axis) whose slices along axis k are divided by s_k


@dataclass
class Smoothing:
    """Smoothed activation -> (largest / median channel max) before and after."""

    sites: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: int = 0

    def describe(self) -> str:
        if not self.sites:
            return f"{DESCRIPTION}: no MatMul/Gemm input with a foldable producer"
        worst = max(self.sites, key=lambda k: self.sites[k][0])
        before, after = self.sites[worst]
        return (f"{DESCRIPTION}: {len(self.sites)} activation(s) over {self.samples} samples; largest channel "
                f"max / median {before:.0f}x -> {after:.1f}x at {worst}")


def _weight_rows(node: onnx.NodeProto, idx: GraphIndex) -> tuple[str, int] | None:
    """(initializer, axis along the input channels k) of a linear layer's constant weight."""
    if len(node.input) < 2 or node.input[1] not in idx.initializers:
        return None
    w = idx.initializers[node.input[1]]
    if len(w.dims) != 2:
        return None
    if node.op_type == "MatMul":
        return node.input[1], 0
    if node.op_type == "Gemm" and not attribute(node, "transA", 0) and attribute(node, "alpha", 1.0) == 1.0:
        return node.input[1], 1 if attribute(node, "transB", 0) else 0
    return None


def _producer_folds(x: str, idx: GraphIndex, uses: dict[str, int], channels: int) -> list[tuple[str, int]] | None:
    """Initializers (and axes) to divide so that ``x`` comes out divided by s; None when not foldable."""
    def own(name: str, shape: tuple[int, ...]) -> bool:
        t = idx.initializers.get(name)
        return t is not None and uses.get(name, 0) == 1 and tuple(t.dims) == shape

    node = idx.producer.get(x)
    if node is None or len(idx.consumers.get(x, [])) == 0:
        return None
    if node.op_type == "LayerNormalization" and attribute(node, "axis", -1) == -1:
        ins = [i for i in node.input[1:3] if i]
        return [(i, 0) for i in ins] if all(own(i, (channels,)) for i in ins) else None
    if node.op_type == "Add":
        const = [i for i in node.input if i in idx.initializers]
        other = [i for i in node.input if i not in idx.initializers]
        if len(const) != 1 or len(other) != 1 or not own(const[0], (channels,)):
            return None
        inner = idx.producer.get(other[0])
        if len(idx.consumers.get(other[0], [])) != 1 or inner is None:
            return None
        if inner.op_type == "Mul":                                  # decomposed LayerNorm: x_hat * gamma + beta
            gamma = [i for i in inner.input if i in idx.initializers]
            return [(gamma[0], 0), (const[0], 0)] if len(gamma) == 1 and own(gamma[0], (channels,)) else None
        rows = _weight_rows(inner, idx) if inner.op_type in ("MatMul", "Gemm") else None
        if (rows is None or uses.get(rows[0], 0) != 1 or (inner.op_type == "Gemm" and len(inner.input) > 2)
                or idx.initializers[rows[0]].dims[1 - rows[1]] != channels):
            return None
        return [(rows[0], 1 - rows[1]), (const[0], 0)]             # its output columns, and the bias
    if node.op_type in ("MatMul", "Gemm"):
        rows = _weight_rows(node, idx)
        if rows is None or uses.get(rows[0], 0) != 1 or idx.initializers[rows[0]].dims[1 - rows[1]] != channels:
            return None
        folds = [(rows[0], 1 - rows[1])]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            if not own(node.input[2], (channels,)):
                return None
            folds.append((node.input[2], 0))
        return folds
    return None


def _keeps_last_dim(reshape: onnx.NodeProto, idx: GraphIndex, channels: int) -> bool:
    shape = idx.const(reshape.input[1])
    return shape is not None and shape.size > 0 and int(shape[-1]) == channels


def _linear_readers(x: str, idx: GraphIndex) -> list[onnx.NodeProto] | None:
    """The linear layers with constant weights reading ``x`` as input A, directly or through one
    Reshape (ORT's pre-processing turns MatMul + Add into Reshape -> Gemm -> Reshape); None when
    anything else reads it."""
    out = []
    for r in idx.consumers.get(x, []):
        if r.op_type in ("MatMul", "Gemm") and r.input[0] == x and _weight_rows(r, idx):
            out.append(r)
        elif r.op_type == "Reshape" and r.input[0] == x and r.output[0] not in idx.graph_outputs:
            inner = _linear_readers(r.output[0], idx)
            if not inner or any(n.op_type == "Reshape" for n in idx.consumers[r.output[0]]):
                return None
            out += inner
        else:
            return None
    return out or None


def find_sites(model: onnx.ModelProto) -> list[_Site]:
    """Activations read only by linear layers with constant weights, whose producer can absorb 1 / s."""
    g = model.graph
    idx = GraphIndex.build(g)
    uses = use_counts(g)
    sites = []
    for x in list(idx.consumers):
        if x in idx.graph_outputs or x in idx.initializers:
            continue
        linear = _linear_readers(x, idx)
        if not linear:
            continue
        name, axis = _weight_rows(linear[0], idx)
        channels = idx.initializers[name].dims[axis]
        if any(idx.initializers[w].dims[a] != channels for w, a in (_weight_rows(n, idx) for n in linear)):
            continue
        if any(not _keeps_last_dim(r, idx, channels) for r in idx.consumers[x] if r.op_type == "Reshape"):
            continue
        folds = _producer_folds(x, idx, uses, channels)
        if folds:
            sites.append(_Site(x, linear, folds))
    return sites


def smooth_file(src: Path, dst: Path, samples: Iterable[Any], device: Any, *, alpha: float = ALPHA) -> Smoothing:
    """Smooth the model at ``src`` into ``dst`` using per-channel activation maxima over ``samples``."""
    model = onnx.load(str(src))
    sites = find_sites(model)
    result = Smoothing()
    amax: dict[str, np.ndarray] = {}
    if sites:
        with tempfile.TemporaryDirectory(prefix="edgequant-sq-") as tmp:
            exposed = Path(tmp) / "x.onnx"
            names = expose_tensors(src, exposed, {s.x for s in sites})
            for (values,), _ in device.iter_outputs([exposed], samples, outputs=[names]):
                for t, a in values.items():
                    m = np.abs(np.asarray(a, np.float64)).reshape(-1, a.shape[-1]).max(axis=0)
                    amax[t] = np.maximum(amax.get(t, m), m)
                result.samples += 1
    inits = {t.name: t for t in model.graph.initializer}
    idx = GraphIndex.build(model.graph)
    for site in sites:
        if site.x not in amax:
            continue
        a = amax[site.x]
        w = np.max([np.abs(np.moveaxis(numpy_helper.to_array(inits[n.input[1]]), ax, 0)).max(axis=1)
                    for n in site.consumers for _, ax in [_weight_rows(n, idx)]], axis=0)
        ok = (a > 0) & (w > 0)
        s = np.where(ok, a ** alpha / np.where(ok, w, 1.0) ** (1 - alpha), 1.0)
        s = np.clip(s, 1e-5, 1e5)
        for name, axis in site.divide:
            _scale_along(inits[name], axis, 1.0 / s)
        for n in site.consumers:
            name, axis = _weight_rows(n, idx)
            _scale_along(inits[name], axis, s)
        med = float(np.median(a[a > 0])) if (a > 0).any() else 1.0
        after = a / s
        result.sites[site.x] = (float(a.max() / med), float(after.max() / max(np.median(after[after > 0]), 1e-30)))
    onnx.save(model, str(dst))
    return result


def _scale_along(t: onnx.TensorProto, axis: int, factor: np.ndarray) -> None:
    a = numpy_helper.to_array(t).astype(np.float64)
    shape = [1] * a.ndim
    shape[axis] = factor.size
    t.CopyFrom(numpy_helper.from_array((a * factor.reshape(shape)).astype(np.float32), t.name))
