"""What the weight-rounding algorithms (AdaRound, GPTQ) share: the quantized model's integer
weight layers, the Gram statistics of their FP32 inputs on calibration data, and the driver that
writes a layer's new integers only where they reconstruct its FP32 output better on held-out data.

Two graph forms carry integer weights:
- static QDQ: ``DequantizeLinear(w_q, scale, zp) -> Conv/Gemm/MatMul``;
- onnxruntime's dynamic quantization: ``MatMulInteger(DynamicQuantizeLinear(x), w_q) -> Cast ->
  Mul(x_scale * w_scale)``, the weight's scale read off the rescaling Mul.

The reconstruction loss |X~ W_hat - X W|^2 is quadratic in the weights, so the data enter only as
Gram statistics over sampled output positions, per group: H = X~^T X~ and C = X~^T (W x). Where
a sample has an attention mask ([1, T], like ``attention_mask``) and the layer reads [1, T, K],
only real token positions are sampled: padding rows are computed, but nothing reads them.
"""

from __future__ import annotations

import collections
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..measure.fidelity import feeds_of
from ..measure.padding import real_positions
from ..qdq.graph import GraphIndex, expose_tensors, float_source, use_counts

HELD_OUT = 4                      # every 4th sampled position judges the result, the rest trains


@dataclass
class LayerResult:
    kept: bool                    # new integers written (False: nearest kept, no held-out gain)
    error_ratio: float            # held-out output error, new / nearest
    changed: int                  # weights off their nearest integer
    weights: int


@dataclass
class Rounding:
    """What a rounding algorithm did: layer -> its result; layers skipped and why."""

    description: str
    layers: dict[str, LayerResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        kept = {n: r for n, r in self.layers.items() if r.kept}
        if not kept:
            return (f"{self.description}: no layer improved on nearest rounding ({len(self.layers)} tried over "
                    f"{self.samples} samples{self._skips()})")
        db = sorted(-10 * np.log10(max(r.error_ratio, 1e-12)) for r in kept.values())
        best = max(kept, key=lambda n: -kept[n].error_ratio)
        moved = sum(r.changed for r in kept.values()) / max(sum(r.weights for r in kept.values()), 1)
        return (f"{self.description}: {len(kept)} of {len(self.layers)} layer(s) over {self.samples} samples, "
                f"{moved:.0%} of their weights off nearest; held-out output error lower by median "
                f"{db[len(db) // 2]:.1f} dB, up to {db[-1]:.1f} dB at {best}; {self.seconds:.0f} s{self._skips()}")

    def _skips(self) -> str:
        """The skipped layers by reason: a user must see which integers were left at nearest rounding."""
        if not self.skipped:
            return ""
        reasons = collections.Counter(self.skipped.values())
        return "; skipped: " + ", ".join(f"{n} {why}" for why, n in reasons.most_common())


@dataclass
class WeightLayer:
    name: str
    op: str
    x_float: str                  # the activation it reads in the FP32 graph
    x_quant: str                  # ... and in the quantized graph
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


def _qdq_weight(n: onnx.NodeProto, idx: GraphIndex) -> tuple[str, np.ndarray, np.ndarray, int] | None:
    """Static QDQ: (integer initializer, scale, zero point, axis) of the layer's weight DequantizeLinear."""
    wdq = idx.producer.get(n.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear":
        return None                                          # weight not quantized (or not constant)
    scale = idx.const(wdq.input[1])
    zp = idx.const(wdq.input[2]) if len(wdq.input) > 2 and wdq.input[2] else np.zeros(1, np.int8)
    if scale is None or zp is None:
        return None
    return wdq.input[0], scale, zp, int(next((a.i for a in wdq.attribute if a.name == "axis"), 1))


def _dynamic_weight(n: onnx.NodeProto, idx: GraphIndex) -> tuple[str, np.ndarray, np.ndarray, int] | None:
    """onnxruntime's dynamic MatMul: the weight's scale is the constant factor of the Mul that
    rescales the MatMulInteger's Cast output (x_scale * w_scale); per output column: axis 1."""
    cast = idx.consumers.get(n.output[0], [])
    if len(cast) != 1 or cast[0].op_type != "Cast":
        return None
    mul = idx.consumers.get(cast[0].output[0], [])
    if len(mul) != 1 or mul[0].op_type != "Mul":
        return None
    other = next((t for t in mul[0].input if t != cast[0].output[0]), None)
    scales = idx.producer.get(other or "")
    if scales is None or scales.op_type != "Mul":
        return None
    scale = next((c for c in (idx.const(t) for t in scales.input) if c is not None), None)
    zp = idx.const(n.input[3]) if len(n.input) > 3 and n.input[3] else np.zeros(1, np.int8)
    if scale is None or zp is None:
        return None
    return n.input[1], scale, zp, 1


def find_layers(quantized: onnx.ModelProto, float_inits: dict[str, onnx.TensorProto],
                skipped: dict[str, str]) -> list[WeightLayer]:
    """Every layer of ``quantized`` whose integer weights are a rounding of an FP32 weight of
    ``float_inits`` (the graph the quantizer saw); the others land in ``skipped`` with why."""
    idx = GraphIndex.build(quantized.graph)
    uses = use_counts(quantized.graph)
    out = []
    for n in quantized.graph.node:
        if n.op_type == "QAttention":
            # its packed [hidden, 3 x hidden] weight could be rounded like a MatMulInteger's, and each layer's
            # own error drops, but the model's does not: all-MiniLM-L6-v2 fused, 128 texts, pooled cosine
            # 0.99276 with these at nearest vs 0.99254 rounded (benchmarks/FINDINGS.md)
            skipped[n.name or n.output[0]] = "packed Q/K/V weights of a fused attention (QAttention), kept at nearest"
            continue
        dynamic = n.op_type == "MatMulInteger"
        if not (dynamic or n.op_type in ("Conv", "Gemm", "MatMul")) or len(n.input) < 2:
            continue
        name = n.name or n.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        found = _dynamic_weight(n, idx) if dynamic else _qdq_weight(n, idx)
        if found is None:
            continue
        weight, scale, zp, axis = found
        q = idx.const(weight)
        w = float_inits.get(weight.removesuffix("_quantized"))
        if q is None or q.dtype not in (np.int8, np.uint8) or w is None:
            continue
        w = numpy_helper.to_array(w).astype(np.float64)
        if w.shape != q.shape or uses.get(weight, 0) != 1 or (not dynamic and uses.get(n.input[1], 0) != 1):
            skipped[name] = "weight shared or reshaped"
            continue
        if (n.op_type == "Conv" and w.ndim not in (3, 4)) or (n.op_type != "Conv" and w.ndim != 2) \
                or attrs.get("transA", 0):
            skipped[name] = "unsupported layout"
            continue
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
        if dynamic:      # the input is quantized per call: its FP32 tensor feeds DynamicQuantizeLinear
            dql = idx.producer.get(n.input[0])
            if dql is None or dql.op_type != "DynamicQuantizeLinear":
                continue
            x_float = x_quant = dql.input[0]
            op, qparams = "MatMul", None
        else:
            x_float, x_quant, op, qparams = float_source(idx, n.input[0]), n.input[0], n.op_type, \
                _input_qparams(idx, n.input[0])
        out.append(WeightLayer(name, op, x_float, x_quant, weight, w, s, z, q, lo, hi, attrs, qparams))
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

def _conv_geometry(layer: WeightLayer, shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
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


def _positions(layer: WeightLayer, shape: tuple[int, ...], count: int, rng: np.random.Generator,
               real: np.ndarray | None = None) -> np.ndarray:
    """``count`` distinct output positions (flat indices) of one sample; only where ``real`` (a
    bool per flat position of a MatMul/Gemm input) when given."""
    if layer.op == "Conv":
        total = shape[0] * int(np.prod(_conv_geometry(layer, shape)[2]))
    else:
        total = int(np.prod(shape[:-1]))
    pool = np.flatnonzero(real) if real is not None and real.size == total else np.arange(total)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))


def _columns(layer: WeightLayer, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
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
class GramStats:
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


def loss(st: GramStats, split: int, wq: np.ndarray) -> float:
    """|X~ wq - X W|^2 over the split's sampled positions (``wq``: [groups, K, outputs])."""
    h, c = st.h[split], st.c[split]
    return float(st.tt[split] - 2 * np.sum(c * wq) + np.sum(wq * (h @ wq)))


def _recorded(samples: Iterable[Any], seen: collections.deque) -> Iterator[Any]:
    for sample in samples:
        seen.append(sample)
        yield sample


def _real_rows(sample: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    feeds, _ = feeds_of(sample)
    return real_positions(feeds, shape)


def collect(float_model: Path, quantized_model: Path, layers: list[WeightLayer], samples: Iterable[Any], device: Any,
            limit: int, columns: int, inputs: str) -> tuple[dict[str, GramStats], int]:
    """Each layer's :class:`GramStats` over at most ``limit`` samples, ``columns`` positions in all.
    ``inputs``: what the new weights multiply: "fp32" (the FP32 input), "own" (through the layer's
    own input Q/DQ) or "model" (the quantized model's input)."""
    expected = min(limit, getattr(samples, "count", None) or limit)
    per_sample = -(-columns // max(expected, 1))
    stats: dict[str, GramStats] = {}
    rng = np.random.default_rng(0)
    count = 0
    seen: collections.deque = collections.deque()
    with tempfile.TemporaryDirectory(prefix="edgequant-rounding-") as tmp:
        paths = [Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"][: 2 if inputs == "model" else 1]
        names = [expose_tensors(float_model, paths[0], {layer.x_float for layer in layers})]
        if inputs == "model":
            names.append(expose_tensors(quantized_model, paths[1], {layer.x_quant for layer in layers}))
        stream = _recorded(itertools.islice(samples, limit), seen)
        for values, _ in device.iter_outputs(paths, stream, outputs=names):
            sample = seen.popleft() if seen else None     # outputs come in order, one per sample
            fv, qv = values[0], values[-1]
            for layer in layers:
                x = fv.get(layer.x_float)
                if x is None:
                    continue
                real = _real_rows(sample, np.shape(x)) if sample is not None and layer.op != "Conv" else None
                pos = _positions(layer, np.shape(x), per_sample, rng, real)
                if not len(pos):
                    continue
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
                    st = stats[layer.name] = GramStats([zeros_h, zeros_h], [np.zeros(wm.shape)] * 2, [0.0, 0.0])
                held = (st.columns + np.arange(len(pos))) % HELD_OUT == HELD_OUT - 1
                st.add(0, xq_cols[:, ~held], t[:, ~held])
                st.add(1, xq_cols[:, held], t[:, held])
                st.columns += len(pos)
            count += 1
    for st in stats.values():
        st.flush(0)
        st.flush(1)
    return stats, count


def round_weights(float_model: str | Path, quantized_model: str | Path, out_model: str | Path, samples: Iterable[Any],
                  device: Any, new_integers: Callable[[GramStats, WeightLayer], np.ndarray], description: str, *,
                  limit: int, columns: int, inputs: str = "fp32") -> Rounding:
    """Write ``quantized_model`` to ``out_model`` with each layer's integers from ``new_integers``
    (stored layout) where they beat nearest rounding on the held-out positions; ``float_model`` is
    the FP32 graph the quantizer saw (same tensor names)."""
    if inputs not in ("fp32", "own", "model"):
        raise ValueError(f"inputs must be fp32, own or model, not {inputs!r}")
    start = time.monotonic()
    quantized = onnx.load(str(quantized_model))
    float_inits = {t.name: t for t in onnx.load(str(float_model)).graph.initializer}
    result = Rounding(description)
    layers = find_layers(quantized, float_inits, result.skipped)
    stats, result.samples = (collect(Path(float_model), Path(quantized_model), layers, samples, device, limit,
                                     columns, inputs) if layers else ({}, 0))
    inits = {t.name: t for t in quantized.graph.initializer}
    for layer in layers:
        st = stats.get(layer.name)
        if st is None or not st.columns:
            result.skipped[layer.name] = "its input was not seen on the calibration data"
            continue
        new = new_integers(st, layer)
        near = loss(st, 1, layer.to_mat(layer.scale * (layer.q - layer.zp)))
        got = loss(st, 1, layer.to_mat(layer.scale * (new - layer.zp)))
        ratio = got / near if near > 0 else 1.0
        kept = ratio < 1.0
        result.layers[layer.name] = LayerResult(kept, ratio, int(np.sum(new != layer.q)), layer.q.size)
        if kept:
            inits[layer.weight].CopyFrom(numpy_helper.from_array(new.astype(layer.q.dtype), layer.weight))
    onnx.save(quantized, str(out_model))
    result.seconds = time.monotonic() - start
    return result
