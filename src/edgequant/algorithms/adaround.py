"""Learned rounding (AdaRound: Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"), on the quantized QDQ model's weight initializers.

Each weight of a Conv/Gemm/MatMul layer rounds down or up (one step from nearest at most), chosen
to reconstruct the layer's FP32 output W x on calibration data: soft rounding h(V) (rectified
sigmoid), the regularizer lambda * mean(1 - |2h - 1|^beta) with beta annealed 20 -> 2 after a warm
start, Adam, then hard rounding.

The input x~ that W_soft multiplies is the layer's FP32 input by default (``inputs="fp32"``). The
paper's asymmetric form, the quantized model's input (``"model"``: one pass of the nearest-rounded
QDQ model for every layer at once, since a pass per layer would cost the calibration set once per
layer), double-counts: each layer learns to undo its upstream layers' rounding error while those
layers are re-rounded too (planted grouped -> depthwise conv pair, held-out output MSE 0.0032 ->
0.00064, against 0.00024 with FP32 inputs). ``"own"`` (x through the layer's own input Q/DQ)
fits the activation noise instead (DMS iris model: 37% of weights flipped for 0.2 dB median
held-out gain, against 13% for 4.5 dB with FP32 inputs).

The reconstruction loss is quadratic in the weights, so the data enters only as Gram statistics
over sampled output positions, per group: H = X~^T X~ and C = X~^T (W x). An iteration costs
K^2 * C_out (K: the group's inputs per output), independent of the number of samples, and memory
is K^2 per layer. A quarter of the positions is held out: a layer keeps nearest rounding unless
its held-out output error is lower with the learned one.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..qdq.graph import GraphIndex, expose_tensors, float_source, use_counts

DESCRIPTION = ("learned rounding (AdaRound): each Conv/Gemm/MatMul weight rounds up or down, as best "
               "reconstructs the layer's FP32 output on calibration data")
ZETA, GAMMA = 1.1, -0.1           # the rectified sigmoid's stretch (the paper's values)
BETA_START, BETA_END, WARM_START = 20.0, 2.0, 0.2
HELD_OUT = 4                      # every 4th sampled position judges the result, the rest trains


@dataclass
class LayerResult:
    kept: bool                    # learned rounding written (False: nearest kept, no held-out gain)
    error_ratio: float            # held-out output error, learned / nearest
    changed: int                  # weights that moved off nearest
    weights: int


@dataclass
class AdaRound:
    """What was learned: layer -> its result; layers skipped and why."""

    layers: dict[str, LayerResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        kept = {n: r for n, r in self.layers.items() if r.kept}
        if not kept:
            return (f"{DESCRIPTION}: no layer improved on nearest rounding ({len(self.layers)} tried over "
                    f"{self.samples} samples, {len(self.skipped)} skipped)")
        db = sorted(-10 * np.log10(max(r.error_ratio, 1e-12)) for r in kept.values())
        best = max(kept, key=lambda n: -kept[n].error_ratio)
        moved = sum(r.changed for r in kept.values()) / max(sum(r.weights for r in kept.values()), 1)
        return (f"{DESCRIPTION}: {len(kept)} of {len(self.layers)} layer(s) over {self.samples} samples, "
                f"{moved:.0%} of their weights rounded the other way; held-out output error lower by median "
                f"{db[len(db) // 2]:.1f} dB, up to {db[-1]:.1f} dB at {best}; {self.seconds:.0f} s")


@dataclass
class _Layer:
    name: str
    op: str
    x_float: str                  # the activation it reads in the FP32 graph
    x_quant: str                  # ... and in the QDQ graph (a DequantizeLinear output)
    weight: str                   # the integer initializer
    w: np.ndarray                 # FP32 weight, stored layout
    scale: np.ndarray             # broadcast to w.shape
    zp: np.ndarray
    q: np.ndarray                 # the quantizer's (nearest) integers
    lo: int
    hi: int
    attrs: dict
    x_qparams: tuple[float, float, int, int] | None = None   # its input's scale, zero point, integer range

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """x as its own QuantizeLinear/DequantizeLinear pair gives it to the layer."""
        if self.x_qparams is None:
            return x
        s, z, lo, hi = self.x_qparams
        return (np.clip(np.rint(x / s) + z, lo, hi) - z) * s

    @property
    def groups(self) -> int:
        return int(self.attrs.get("group", 1)) if self.op == "Conv" else 1

    def to_mat(self, a: np.ndarray) -> np.ndarray:
        """Stored layout -> [groups, K, outputs] with y = x @ W per group."""
        if self.op == "Conv":
            g = self.groups
            return a.reshape(g, a.shape[0] // g, -1).transpose(0, 2, 1)
        return (a.T if self.attrs.get("transB", 0) else a)[None]

    def from_mat(self, m: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return m.transpose(0, 2, 1).reshape(self.w.shape)
        return m[0].T if self.attrs.get("transB", 0) else m[0]


def _broadcast(v: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    if v.size == 1:
        return np.full(shape, v.reshape(()), np.float64)
    dims = [1] * len(shape)
    dims[axis % len(shape)] = v.size
    return np.broadcast_to(v.reshape(dims), shape).astype(np.float64)


def _layers(qdq: onnx.ModelProto, float_inits: dict[str, onnx.TensorProto], skipped: dict[str, str]) -> list[_Layer]:
    idx = GraphIndex.build(qdq.graph)
    uses = use_counts(qdq.graph)
    out = []
    for n in qdq.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        name = n.name or n.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        wdq = idx.producer.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear":
            continue                                          # weight not quantized (or not constant)
        q, scale = idx.const(wdq.input[0]), idx.const(wdq.input[1])
        zp = idx.const(wdq.input[2]) if len(wdq.input) > 2 and wdq.input[2] else np.zeros(1, np.int8)
        w = float_inits.get(wdq.input[0].removesuffix("_quantized"))
        if q is None or scale is None or zp is None or q.dtype not in (np.int8, np.uint8) or w is None:
            continue
        w = numpy_helper.to_array(w).astype(np.float64)
        if w.shape != q.shape or uses.get(wdq.input[0], 0) != 1 or uses.get(n.input[1], 0) != 1:
            skipped[name] = "weight shared or reshaped"
            continue
        if (n.op_type == "Conv" and w.ndim not in (3, 4)) or (n.op_type != "Conv" and w.ndim != 2) \
                or attrs.get("transA", 0):
            skipped[name] = "unsupported layout"
            continue
        axis = int(next((a.i for a in wdq.attribute if a.name == "axis"), 1))
        s, z = _broadcast(scale, w.shape, axis), _broadcast(zp, w.shape, axis)
        # never leave the integer range the quantizer used (7-bit reduce_range, symmetric -127..127)
        if not z.any() and q.dtype == np.int8:
            m = int(np.abs(q.astype(np.int32)).max())
            lo, hi = -m, m
        else:
            lo, hi = int(q.min()), int(q.max())
        floor = np.floor(w / s + z)
        if np.any((q < floor) | (q > floor + 1)):
            skipped[name] = "integer weights are not a rounding of the FP32 weights"
            continue
        out.append(_Layer(name, n.op_type, float_source(idx, n.input[0]), n.input[0], wdq.input[0], w, s, z,
                          q, lo, hi, attrs, _input_qparams(idx, n.input[0])))
    return out


def _input_qparams(idx: GraphIndex, tensor: str) -> tuple[float, float, int, int] | None:
    dq = idx.producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    scale = idx.const(dq.input[1])
    zp = idx.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if scale is None or scale.size != 1 or zp is None or zp.size != 1 or zp.dtype.kind not in "iu":
        return None
    info = np.iinfo(zp.dtype)
    return float(scale.reshape(())), float(zp.reshape(())), int(info.min), int(info.max)


# ---- sampled columns: what the layer multiplies its weights with ---------------------------------

def _conv_geometry(layer: _Layer, shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """Begin pads, end pads and output size per spatial axis."""
    kernel = layer.w.shape[2:]
    nd = len(kernel)
    strides = list(layer.attrs.get("strides", [1] * nd))
    dil = list(layer.attrs.get("dilations", [1] * nd))
    auto = layer.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(layer.attrs.get("pads", [0] * 2 * nd))
    begin, end, size = [], [], []
    for i, (n, k, s, d) in enumerate(zip(shape[2:], kernel, strides, dil)):
        span = (k - 1) * d + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (-(-n // s) - 1) * s + span - n)
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        elif auto == "VALID":
            begin.append(0)
            end.append(0)
        else:
            begin.append(pads[i])
            end.append(pads[nd + i])
        size.append((n + begin[-1] + end[-1] - span) // s + 1)
    return begin, end, size


def _positions(layer: _Layer, shape: tuple[int, ...], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct output positions (flat indices) of one sample."""
    if layer.op == "Conv":
        total = shape[0] * int(np.prod(_conv_geometry(layer, shape)[2]))
    else:
        total = int(np.prod(shape[:-1]))
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


def _columns(layer: _Layer, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The layer's inputs at output positions ``pos``: [groups, positions, K] (im2col rows)."""
    x = np.asarray(x)
    if layer.op != "Conv":
        return x.reshape(-1, x.shape[-1])[pos][None].astype(np.float64)
    begin, end, size = _conv_geometry(layer, x.shape)
    kernel = list(layer.w.shape[2:])
    strides = list(layer.attrs.get("strides", [1] * len(kernel)))
    dil = list(layer.attrs.get("dilations", [1] * len(kernel)))
    if x.ndim == 3:                                   # 1-D conv as 2-D with height 1
        x, begin, end, size = x[:, :, None], [0, *begin], [0, *end], [1, *size]
        kernel, strides, dil = [1, *kernel], [1, *strides], [1, *dil]
    n, oh, ow = np.unravel_index(pos, (x.shape[0], *size))
    ih = oh[:, None] * strides[0] + np.arange(kernel[0]) * dil[0] - begin[0]          # [P, kh], unpadded
    iw = ow[:, None] * strides[1] + np.arange(kernel[1]) * dil[1] - begin[1]
    inside = ((ih >= 0) & (ih < x.shape[2]))[:, :, None] & ((iw >= 0) & (iw < x.shape[3]))[:, None, :]
    ih, iw = np.clip(ih, 0, x.shape[2] - 1), np.clip(iw, 0, x.shape[3] - 1)
    # only the sampled patches are gathered (no padded copy of the activation); padding reads 0
    patch = x[n[:, None, None], :, ih[:, :, None], iw[:, None, :]] * inside[..., None]   # [P, kh, kw, C]
    g = layer.groups
    return patch.transpose(0, 3, 1, 2).reshape(len(pos), g, -1).transpose(1, 0, 2).astype(np.float64)


@dataclass
class _Stats:
    """Gram statistics of one layer: H = X~^T X~, C = X~^T (W x), tt = |W x|^2, per split
    (0 trains, 1 is held out). Columns are buffered so the products are few and large."""

    h: list[np.ndarray]
    c: list[np.ndarray]
    tt: list[float]
    columns: int = 0
    pending: list[list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=lambda: [[], []])

    def add(self, split: int, xq: np.ndarray, t: np.ndarray) -> None:
        self.pending[split].append((xq, t))
        if sum(x.shape[1] for x, _ in self.pending[split]) >= 2048:
            self.flush(split)

    def flush(self, split: int) -> None:
        if not self.pending[split]:
            return
        xq = np.concatenate([x for x, _ in self.pending[split]], axis=1)
        t = np.concatenate([t for _, t in self.pending[split]], axis=1)
        self.pending[split] = []
        xt = xq.transpose(0, 2, 1)
        self.h[split] = self.h[split] + xt @ xq
        self.c[split] = self.c[split] + xt @ t
        self.tt[split] += float(np.sum(t * t))


def _loss(st: _Stats, split: int, wq: np.ndarray) -> float:
    h, c = st.h[split], st.c[split]
    return float(st.tt[split] - 2 * np.sum(c * wq) + np.sum(wq * (h @ wq)))


def _collect(float_model: Path, qdq_model: Path, layers: list[_Layer], samples: Iterable[Any], device: Any,
             limit: int, columns: int, inputs: str) -> tuple[dict[str, _Stats], int]:
    expected = min(limit, getattr(samples, "count", None) or limit)
    per_sample = -(-columns // max(expected, 1))
    stats: dict[str, _Stats] = {}
    rng = np.random.default_rng(0)
    count = 0
    with tempfile.TemporaryDirectory(prefix="edgequant-adaround-") as tmp:
        paths = [Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"][: 2 if inputs == "model" else 1]
        names = [expose_tensors(float_model, paths[0], {layer.x_float for layer in layers})]
        if inputs == "model":
            names.append(expose_tensors(qdq_model, paths[1], {layer.x_quant for layer in layers}))
        for values, _ in device.iter_outputs(paths, itertools.islice(samples, limit), outputs=names):
            fv, qv = values[0], values[-1]
            for layer in layers:
                x = fv.get(layer.x_float)
                if x is None:
                    continue
                pos = _positions(layer, np.shape(x), per_sample, rng)
                xf_cols = _columns(layer, x, pos)
                if inputs == "model" and np.shape(qv.get(layer.x_quant)) == np.shape(x):
                    xq_cols = _columns(layer, qv[layer.x_quant], pos)
                else:    # "own": quantizing the gathered columns = gathering the quantized input (Q(0) = 0)
                    xq_cols = layer.quantize_input(xf_cols) if inputs != "fp32" else xf_cols
                wm = layer.to_mat(layer.w)
                t = xf_cols @ wm
                st = stats.get(layer.name)
                if st is None:
                    zeros_h = np.zeros((wm.shape[0], wm.shape[1], wm.shape[1]))
                    st = stats[layer.name] = _Stats([zeros_h, zeros_h], [np.zeros(wm.shape)] * 2, [0.0, 0.0])
                held = (st.columns + np.arange(len(pos))) % HELD_OUT == HELD_OUT - 1
                st.add(0, xq_cols[:, ~held], t[:, ~held])
                st.add(1, xq_cols[:, held], t[:, held])
                st.columns += len(pos)
            count += 1
    for st in stats.values():
        st.flush(0)
        st.flush(1)
    return stats, count


# ---- the optimization -------------------------------------------------------------------------

def learn_rounding(st: _Stats, layer: _Layer, *, iterations: int, reg: float, lr: float) -> np.ndarray:
    """The learned integers (stored layout) from the training split's statistics."""
    s, z = layer.to_mat(layer.scale), layer.to_mat(layer.zp)
    r = layer.to_mat(layer.w) / s + z
    floor = np.floor(r)
    base = np.clip(floor, layer.lo, layer.hi)
    free = (floor >= layer.lo) & (floor + 1 <= layer.hi)   # the others sit at the range's edge: fixed
    # W_soft = s * (base + h - z) where free: affine in h, so two constant tensors carry it
    offset = (s * (base - z)).astype(np.float32)
    slope = (s * free).astype(np.float32)
    frac = np.clip(r - floor, 1e-4, 1 - 1e-4)
    v = (-np.log((ZETA - GAMMA) / (frac - GAMMA) - 1)).astype(np.float32)   # h(v) = frac: W_soft = W
    norm = max(_loss(st, 0, s * (layer.to_mat(layer.q) - z)), 1e-30)        # nearest rounding's error = 1
    hess, cross = st.h[0].astype(np.float32), st.c[0].astype(np.float32)
    slope2 = slope * np.float32(2.0 / norm)
    m, u = np.zeros_like(v), np.zeros_like(v)
    warm = int(WARM_START * iterations)
    for it in range(iterations):
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * np.float32(ZETA - GAMMA) + np.float32(GAMMA)
        h = np.minimum(np.maximum(raw, 0.0), 1.0)
        grad = (hess @ (offset + slope * h) - cross) * slope2                 # d reconstruction / dh
        if it >= warm:                                                         # d regularizer / dh
            beta = BETA_END + (BETA_START - BETA_END) * (1 - (it - warm) / max(iterations - warm, 1))
            a = 2 * h - 1
            grad -= np.float32(2 * beta * reg / h.size) * np.abs(a) ** np.float32(beta - 1) * np.sign(a)
        grad *= np.float32(ZETA - GAMMA) * sig * (1 - sig) * ((raw > 0) & (raw < 1))
        m = 0.9 * m + 0.1 * grad                                               # Adam
        u = 0.999 * u + 0.001 * grad * grad
        v -= np.float32(lr / (1 - 0.9 ** (it + 1))) * m / (np.sqrt(u / np.float32(1 - 0.999 ** (it + 1))) + 1e-8)
    h = np.clip((1.0 / (1.0 + np.exp(-v))) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    return layer.from_mat(base + free * (h >= 0.5))


def adaround(float_model: str | Path, qdq_model: str | Path, out_model: str | Path, samples: Iterable[Any],
             device: Any, *, limit: int = 256, columns: int = 4096, iterations: int = 1000, reg: float = 10.0,
             lr: float = 0.01, inputs: str = "fp32") -> AdaRound:
    """Write ``qdq_model`` with learned weight rounding to ``out_model``; ``float_model`` is the FP32
    graph the quantizer saw (same tensor names). ``columns`` output positions per layer are sampled
    over at most ``limit`` calibration samples; ``iterations`` Adam steps per layer; ``inputs``:
    what the rounded weights multiply ("fp32", "own" or "model", see the module's docstring)."""
    if inputs not in ("fp32", "own", "model"):
        raise ValueError(f"inputs must be fp32, own or model, not {inputs!r}")
    start = time.monotonic()
    qdq = onnx.load(str(qdq_model))
    float_inits = {t.name: t for t in onnx.load(str(float_model)).graph.initializer}
    result = AdaRound()
    layers = _layers(qdq, float_inits, result.skipped)
    stats, result.samples = (_collect(Path(float_model), Path(qdq_model), layers, samples, device, limit, columns, inputs)
                             if layers else ({}, 0))
    inits = {t.name: t for t in qdq.graph.initializer}
    for layer in layers:
        st = stats.get(layer.name)
        if st is None or not st.columns:
            result.skipped[layer.name] = "its input was not seen on the calibration data"
            continue
        learned = learn_rounding(st, layer, iterations=iterations, reg=reg, lr=lr)
        near = _loss(st, 1, layer.to_mat(layer.scale * (layer.q - layer.zp)))
        got = _loss(st, 1, layer.to_mat(layer.scale * (learned - layer.zp)))
        ratio = got / near if near > 0 else 1.0
        kept = ratio < 1.0
        result.layers[layer.name] = LayerResult(kept, ratio, int(np.sum(learned != layer.q)), layer.q.size)
        if kept:
            inits[layer.weight].CopyFrom(numpy_helper.from_array(learned.astype(layer.q.dtype), layer.weight))
    onnx.save(qdq, str(out_model))
    result.seconds = time.monotonic() - start
    return result
