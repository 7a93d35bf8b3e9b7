"""SmoothQuant-style migration (Xiao et al. 2023) for MatMul/Gemm inputs with outlier channels.

Why: in transformers a few input channels of the linear layers (the same ones on every token)
are 10-100x larger than the rest; one per-tensor activation scale then leaves the other channels
a few levels. Per input channel k of activation X feeding linear layers with constant weights W:
X[..., k] / s_k and W[k, :] * s_k keep X W unchanged, and s_k = max|X_k|^alpha / max|W_k|^(1 -
alpha) (floored at the median s: quiet channels are not amplified) moves part of the outlier's
range (in log scale) into the weights, which are quantized per output channel anyway. alpha is
chosen per activation by the INT8 error its readers would keep
(:mod:`edgequant.algorithms.smoothquant_strength`); an activation no alpha helps is left alone.

Where the division goes: into X's producer where every reader of X is such a linear layer, so no
op is added and the transform is exact in FP32: LayerNormalization (scale and bias / s), its
decomposed form (Mul by gamma then Add beta), or a MatMul/Gemm with constant weights (+ Add bias)
whose output columns are divided. With ``explicit`` (dynamic quantization), an activation that
something else also reads -- the residual Add that reads every LayerNorm output of a post-LN BERT,
a GELU output -- gets one ``Mul(X, 1/s)`` in front of its linear readers instead (exact too; an
elementwise pass per site, 2-4% of the HF BERT's dynamic INT8 time). Static QDQ would quantize that
Mul's input at X's own range, so static mode smooths only where the producer folds.
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

from ..qdq.graph import GraphIndex, attribute, expose_tensors, static_dims, use_counts
from ..qdq.subgraphs import toposort

DESCRIPTION = ("SmoothQuant: outlier input channels of MatMul/Gemm layers are divided by s_k (folded into the "
               "producer, or one Mul where the producer cannot take it) and the weights' rows multiplied by s_k")


@dataclass
class _Site:
    x: str                                     # the activation that is smoothed
    consumers: list[onnx.NodeProto]            # MatMul/Gemm reading it as input A
    divide: list[tuple[str, int]]              # (initializer, axis) whose slices along axis k are divided by s_k
    channels: int = 0                          # k's extent (the last axis of x)
    rewire: list[onnx.NodeProto] = field(default_factory=list)  # explicit: readers to read Mul(x, 1/s) instead

    @property
    def explicit(self) -> bool:
        return not self.divide


@dataclass(frozen=True)
class SmoothedSite:
    alpha: float
    explicit: bool                 # an added Mul (True) or folded into the producer
    ratio_before: float            # largest / median channel max of the activation
    ratio_after: float
    gain_db: float                 # simulated INT8 SQNR gain of its readers' outputs


@dataclass
class Smoothing:
    """What was smoothed (activation -> :class:`SmoothedSite`) and what was looked at."""

    sites: dict[str, SmoothedSite] = field(default_factory=dict)
    candidates: int = 0
    samples: int = 0

    def describe(self) -> str:
        if not self.candidates:
            return f"{DESCRIPTION}: no MatMul/Gemm input it can smooth"
        if not self.sites:
            return (f"{DESCRIPTION}: none of {self.candidates} activation(s) smoothed (over {self.samples} samples, "
                    "no strength lowered their readers' simulated INT8 error)")
        worst = max(self.sites, key=lambda k: self.sites[k].ratio_before)
        w = self.sites[worst]
        added = sum(site.explicit for site in self.sites.values())
        gains = sorted(site.gain_db for site in self.sites.values())
        alphas = sorted({site.alpha for site in self.sites.values()})
        return (f"{DESCRIPTION}: {len(self.sites)} of {self.candidates} activation(s) over {self.samples} samples"
                + (f" ({added} with an added Mul)" if added else "")
                + f", alpha {'/'.join(f'{a:g}' for a in alphas)} chosen per activation; readers' simulated INT8 "
                f"SQNR +{gains[len(gains) // 2]:.1f} dB median; largest channel max / median "
                f"{w.ratio_before:.0f}x -> {w.ratio_after:.1f}x at {worst}")


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
    _paths, linear, other = _reader_paths(x, idx)
    return None if other else linear or None


def _reader_paths(x: str, idx: GraphIndex) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], bool]:
    """(readers of ``x`` that lead only to linear layers, those linear layers, whether anything
    else reads ``x``)."""
    paths, linear, other = [], [], False
    for r in idx.consumers.get(x, []):
        if r.op_type in ("MatMul", "Gemm") and r.input[0] == x and _weight_rows(r, idx):
            paths.append(r)
            linear.append(r)
        elif r.op_type == "Reshape" and r.input[0] == x and r.output[0] not in idx.graph_outputs:
            inner = _linear_readers(r.output[0], idx)
            if not inner or any(n.op_type == "Reshape" for n in idx.consumers[r.output[0]]):
                other = True
                continue
            paths.append(r)
            linear += inner
        else:
            other = True
    return paths, linear, other


def find_sites(model: onnx.ModelProto, *, explicit: bool = False) -> list[_Site]:
    """Activations read by linear layers with constant weights whose producer can absorb 1 / s (and
    read by nothing else); with ``explicit``, also the others, smoothed by an added Mul."""
    g = model.graph
    idx = GraphIndex.build(g)
    uses = use_counts(g)
    last = static_dims(model, -1)
    sites = []
    for x in list(idx.consumers):
        if x in idx.graph_outputs or x in idx.initializers:
            continue
        paths, linear, other = _reader_paths(x, idx)
        if not linear:
            continue
        name, axis = _weight_rows(linear[0], idx)
        channels = idx.initializers[name].dims[axis]
        if last.get(x, channels) != channels:   # channels not last (a pooled NCHW map flattened): s cannot apply
            continue
        if any(idx.initializers[w].dims[a] != channels for w, a in (_weight_rows(n, idx) for n in linear)):
            continue
        if any(not _keeps_last_dim(r, idx, channels) for r in paths if r.op_type == "Reshape"):
            continue
        if not _own_weights(linear, idx, uses):
            continue
        folds = None if other else _producer_folds(x, idx, uses, channels)
        if folds:
            sites.append(_Site(x, linear, folds, channels))
        elif explicit:
            sites.append(_Site(x, linear, [], channels, rewire=paths))
    return sites


def _own_weights(linear: list[onnx.NodeProto], idx: GraphIndex, uses: dict[str, int]) -> bool:
    """Each weight is read by these layers only: scaling its rows must not change another reader."""
    names = [_weight_rows(n, idx)[0] for n in linear]
    return all(uses.get(w, 0) == names.count(w) for w in set(names))


def smooth_file(src: Path, dst: Path, samples: Iterable[Any], device: Any, *, dynamic: bool = False,
                explicit: bool | None = None, reduce_range: bool = False, per_channel: bool = True) -> Smoothing:
    """Smooth the model at ``src`` into ``dst``: per site the strength that leaves its readers the
    least simulated INT8 error (``dynamic``: per-call activation ranges; else calibrated ones), from
    statistics over ``samples``. ``explicit`` (default: ``dynamic``) also smooths activations whose
    producer cannot absorb the division, with an added Mul."""
    from .smoothquant_strength import SiteStats, choose_strength, rows_per_site

    model = onnx.load(str(src))
    sites = find_sites(model, explicit=dynamic if explicit is None else explicit)
    result = Smoothing(candidates=len(sites))
    per_site = rows_per_site([s.channels for s in sites])
    stats: dict[str, SiteStats] = {s.x: SiteStats(max_rows=per_site) for s in sites}
    if sites:
        with tempfile.TemporaryDirectory(prefix="edgequant-sq-") as tmp:
            exposed = Path(tmp) / "x.onnx"
            names = expose_tensors(src, exposed, set(stats))
            for (values,), _ in device.iter_outputs([exposed], samples, outputs=[names]):
                for t, a in values.items():
                    stats[t].add(np.asarray(a))
                result.samples += 1
    inits = {t.name: t for t in model.graph.initializer}
    idx = GraphIndex.build(model.graph)
    added: list[onnx.NodeProto] = []
    for site in sites:
        st = stats[site.x]
        if st.amax is None or st.amax.size != site.channels:   # not seen, or its last axis is not the channels
            continue
        weights = [_as_k_by_n(inits, n, idx) for n in site.consumers]
        choice = choose_strength(st, weights, dynamic=dynamic, reduce_range=reduce_range, per_channel=per_channel,
                                 min_gain_db=0.5 if site.explicit else 0.1)   # an added Mul costs a pass
        if choice.alpha is None:
            continue
        s = choice.factors
        if site.explicit:
            added.append(_divide_before_readers(model, site, s))
        for name, axis in site.divide:
            _scale_along(inits[name], axis, 1.0 / s)
        for name, axis in dict(_weight_rows(n, idx) for n in site.consumers).items():
            _scale_along(inits[name], axis, s)
        a = st.amax
        med = float(np.median(a[a > 0])) if (a > 0).any() else 1.0
        after = a / s
        result.sites[site.x] = SmoothedSite(
            choice.alpha, site.explicit, float(a.max() / med),
            float(after.max() / max(np.median(after[after > 0]), 1e-30)) if (after > 0).any() else 1.0,
            choice.gain_db)
    if added:
        model.graph.node.extend(added)
        toposort(model.graph)
    onnx.save(model, str(dst))
    return result


def _as_k_by_n(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto, idx: GraphIndex) -> np.ndarray:
    """A linear layer's constant weight with the site's channels k on the first axis."""
    name, axis = _weight_rows(node, idx)
    return np.moveaxis(numpy_helper.to_array(inits[name]).astype(np.float64), axis, 0)


def _divide_before_readers(model: onnx.ModelProto, site: _Site, s: np.ndarray) -> onnx.NodeProto:
    """The node ``Mul(x, 1/s)`` (not yet in the graph); the site's linear paths now read it instead of x."""
    inv = f"{site.x}_smoothquant_inv"
    out = f"{site.x}_smoothquant"
    model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
    for reader in site.rewire:
        reader.input[0] = out
    return onnx.helper.make_node("Mul", [site.x, inv], [out], name=f"{site.x}_smoothquant_mul")


def _scale_along(t: onnx.TensorProto, axis: int, factor: np.ndarray) -> None:
    a = numpy_helper.to_array(t).astype(np.float64)
    shape = [1] * a.ndim
    shape[axis] = factor.size
    t.CopyFrom(numpy_helper.from_array((a * factor.reshape(shape)).astype(np.float32), t.name))
