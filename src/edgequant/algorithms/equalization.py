"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

Why: with one scale per weight tensor (per-tensor weights: what NPUs and older runtimes need) the
output channel with the widest weights sets the INT8 step for all of them, and channels whose
weights are 100x narrower round to a few levels. For Conv1 -> f -> Conv2 with f positively
homogeneous (f(x / s) = f(x) / s for s > 0), dividing output channel i of Conv1 (weights and
bias) by s_i and multiplying input channel i of Conv2 by s_i leaves the FP32 function unchanged;
s_i = sqrt(r1_i * r2_i) / r2_i gives both channels the same range sqrt(r1_i * r2_i). Chains
(Conv2 is the next pair's Conv1) are iterated until the scales settle.

What may sit between the two convs (all exact): nothing, Relu, LeakyRelu, PRelu and its exact
decomposition Relu(x) + a * (x - Relu(x)), Clip(min=0, no max), Max/AveragePool, spatial zero
Pad, Mul by a constant, Add/Sub of two tensors of the same region. Not exact and so refused by
default: Clip(0, 6) (ReLU6: its bound would have to become 6 / s_i per channel, which Clip cannot
express). ``relu6=True`` rewrites those Clips as Relu, as the paper does for MobileNetV2; that
changes the FP32 function wherever an activation exceeded 6, and the caller must measure it.
Groups and depthwise convs on either side are handled (channel i of a grouped Conv2 reads
weights W2[group(i) outputs, i mod in-per-group]).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph_pass import GraphPass, PassContext
from ..qdq.graph import GraphIndex, attribute, use_counts

DESCRIPTION = ("cross-layer equalization: per channel, Conv1's output and the next Conv's input are "
               "rescaled (exactly, through ReLU-like ops) so both weight tensors share the channel's range")
_UNARY = {"Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout"}
MAX_ITERATIONS = 50
TOLERANCE = 1e-3          # stop when no scale moves by more than 0.1 %


@dataclass
class _Pair:
    conv1: onnx.NodeProto
    convs2: list[onnx.NodeProto]
    clips: list[onnx.NodeProto]          # Clip(0, M) nodes to turn into Relu (relu6=True only)


@dataclass
class Equalization:
    """What was equalized: pair label -> range ratio (widest / narrowest channel) of Conv1 before and after."""

    pairs: dict[str, tuple[float, float]] = field(default_factory=dict)
    iterations: int = 0
    relu6_replaced: int = 0
    refused: dict[str, str] = field(default_factory=dict)     # conv -> why its output was not equalized
    output_change: float | None = None                         # measured FP32 output change (relative)

    def describe(self) -> str:
        if not self.pairs:
            return f"{DESCRIPTION}: no Conv -> Conv pair found"
        worst = max(self.pairs, key=lambda k: self.pairs[k][0])
        before, after = self.pairs[worst]
        relu6 = (f"; {self.relu6_replaced} Clip(0, 6) replaced by Relu (not exact: FP32 outputs change where "
                 "activations exceeded 6)") if self.relu6_replaced else ""
        change = f"; FP32 outputs change {self.output_change:.1e} (relative)" if self.output_change is not None else ""
        return (f"{DESCRIPTION}: {len(self.pairs)} pair(s), {self.iterations} iteration(s); widest/narrowest "
                f"channel range {before:.0f}x -> {after:.1f}x at {worst}{relu6}{change}")


def _clip_bounds(node: onnx.NodeProto, idx: GraphIndex) -> tuple[float | None, float | None]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    lo, hi = attrs.get("min"), attrs.get("max")
    for i, name in ((1, "lo"), (2, "hi")):
        if len(node.input) > i and node.input[i]:
            v = idx.const(node.input[i])
            if v is None:
                return (None, None) if name == "lo" else (lo, float("nan"))
            lo, hi = (float(v), hi) if name == "lo" else (lo, float(v))
    return lo, hi


def _homogeneous(node: onnx.NodeProto, idx: GraphIndex, relu6: bool) -> tuple[bool, bool]:
    """(commutes with a positive per-channel scale, is a Clip to replace by Relu)."""
    op = node.op_type
    if op in _UNARY:
        return True, False
    if op == "PRelu":
        return idx.const(node.input[1]) is not None, False
    if op == "Mul":
        return sum(idx.const(i) is not None for i in node.input) == 1, False
    if op in ("Add", "Sub"):                         # x/s + b is not (x + b)/s: no constant operand
        return all(idx.const(i) is None for i in node.input), False
    if op == "Clip":
        lo, hi = _clip_bounds(node, idx)
        if lo != 0.0:
            return False, False
        if hi is None or hi == float("inf"):
            return True, False
        return relu6 and hi == hi, relu6 and hi == hi  # NaN: a non-constant bound
    if op == "Pad":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = idx.const(node.input[1]) if len(node.input) > 1 else np.asarray(attrs.get("pads", []))
        value = idx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        axes = len(node.input) > 3 and node.input[3]              # opset 18 axes: pads no longer per dim
        if pads is None or value is None or axes or len(pads) < 4 or float(np.asarray(value)) != 0.0:
            return False, False
        rank = len(pads) // 2
        return bool(pads[1] == 0 and pads[rank + 1] == 0 and pads[0] == 0 and pads[rank] == 0), False
    return False, False


def _weight(node: onnx.NodeProto, idx: GraphIndex, uses: dict[str, int]) -> np.ndarray | None:
    w = node.input[1] if len(node.input) > 1 else ""
    if w not in idx.initializers or uses.get(w, 0) != 1:
        return None                                  # shared or computed weights: scaling one user breaks others
    return numpy_helper.to_array(idx.initializers[w])


def find_pairs(model: onnx.ModelProto, *, relu6: bool = False) -> tuple[list[_Pair], dict[str, str]]:
    """Conv1 -> (homogeneous region) -> Conv2(s) pairs, and why other convs' outputs were refused."""
    g = model.graph
    idx = GraphIndex.build(g)
    uses = use_counts(g)
    pairs, refused = [], {}
    for conv1 in g.node:
        if conv1.op_type != "Conv" or _weight(conv1, idx, uses) is None:
            continue
        if len(conv1.input) > 2 and conv1.input[2] and uses.get(conv1.input[2], 0) != 1:
            continue
        region, nodes, convs, clips = {conv1.output[0]}, [], [], []
        stack, why = [conv1.output[0]], ""
        while stack and not why:
            t = stack.pop()
            if t in idx.graph_outputs:
                why = f"{t} is a graph output"
            for c in idx.consumers.get(t, []):
                if c.op_type == "Conv" and c.input[0] == t and _weight(c, idx, uses) is not None:
                    if all(c is not k for k in convs):
                        convs.append(c)
                    continue
                ok, clip = _homogeneous(c, idx, relu6)
                if not ok:
                    why = why or f"{c.op_type} {c.name or c.output[0]} is not positively homogeneous"
                    break
                if all(c is not k for k in nodes):
                    nodes.append(c)
                    clips += [c] if clip else []
                    region.add(c.output[0])
                    stack.append(c.output[0])
        for n in nodes:                             # Add/Sub/PRelu/Mul: every data input from this region
            data = [i for i in n.input[:2 if n.op_type in ("Add", "Sub", "Mul", "PRelu") else 1]
                    if idx.const(i) is None]
            if any(i not in region for i in data):
                why = why or f"{n.op_type} {n.name or n.output[0]} mixes in a tensor from elsewhere"
        channels = numpy_helper.to_array(idx.initializers[conv1.input[1]]).shape[0]
        for c in convs:
            w2 = numpy_helper.to_array(idx.initializers[c.input[1]])
            if w2.shape[1] * conv_group(c) != channels:
                why = why or f"{c.name} reads {w2.shape[1] * conv_group(c)} channels, {conv1.name} writes {channels}"
        if why or not convs:
            refused[conv1.name or conv1.output[0]] = why or "no Conv follows"
            continue
        pairs.append(_Pair(conv1, convs, clips))
    return pairs, refused


def conv_group(node: onnx.NodeProto) -> int:
    return attribute(node, "group", 1)


def _in_channel_view(w2: np.ndarray, group: int) -> np.ndarray:
    """|W2| arranged [in_channel, ...]: input channel c of a grouped conv is W2[group(c) rows, c % per_group]."""
    out_per_group, per_group = w2.shape[0] // group, w2.shape[1]
    v = w2.reshape(group, out_per_group, per_group, -1)           # [g, out/g, in/g, k]
    return np.moveaxis(v, 2, 1).reshape(group * per_group, -1)    # [in, out/g * k]


def scale_in_channels(w2: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    out_per_group, per_group = w2.shape[0] // group, w2.shape[1]
    v = w2.reshape(group, out_per_group, per_group, -1) * s.reshape(group, 1, per_group, 1)
    return v.reshape(w2.shape)


def equalize(model: onnx.ModelProto, *, relu6: bool = False, iterations: int = MAX_ITERATIONS,
             tolerance: float = TOLERANCE) -> Equalization:
    """Equalize every Conv -> Conv pair of ``model`` in place (see the module docstring)."""
    pairs, refused = find_pairs(model, relu6=relu6)
    result = Equalization(refused=refused)
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {n: numpy_helper.to_array(inits[n]).astype(np.float64) for p in pairs
              for n in [p.conv1.input[1], *(p.conv1.input[2:3]), *(c.input[1] for c in p.convs2)] if n}

    def ranges(p: _Pair) -> tuple[np.ndarray, np.ndarray]:
        w1 = arrays[p.conv1.input[1]]
        r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
        r2 = np.max([np.abs(_in_channel_view(arrays[c.input[1]], conv_group(c))).max(axis=1) for c in p.convs2], axis=0)
        return r1, r2

    def spread(r: np.ndarray) -> float:
        live = r[r > 0]
        return float(live.max() / live.min()) if live.size else 1.0

    before = {p.conv1.name or p.conv1.output[0]: spread(ranges(p)[0]) for p in pairs}
    for it in range(iterations):
        moved = 0.0
        for p in pairs:
            r1, r2 = ranges(p)
            dead = (r1 <= 1e-8 * max(r1.max(), 1e-30)) | (r2 <= 1e-8 * max(r2.max(), 1e-30))
            s = np.where(dead, 1.0, np.sqrt(r1 * r2) / np.where(r2 > 0, r2, 1.0))
            w1 = arrays[p.conv1.input[1]]
            arrays[p.conv1.input[1]] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(p.conv1.input) > 2 and p.conv1.input[2]:
                arrays[p.conv1.input[2]] = arrays[p.conv1.input[2]] / s
            for c in p.convs2:
                arrays[c.input[1]] = scale_in_channels(arrays[c.input[1]], conv_group(c), s)
            moved = max(moved, float(np.abs(np.log(s)).max()) if s.size else 0.0)
        result.iterations = it + 1
        if moved < tolerance:
            break
    for name, a in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))
    for p in pairs:
        key = p.conv1.name or p.conv1.output[0]
        result.pairs[key] = (before[key], spread(ranges(p)[0]))
        for clip in p.clips:                          # relu6=True: Clip(0, M) -> Relu (not exact)
            clip.op_type = "Relu"
            del clip.input[1:]
            del clip.attribute[:]
            result.relu6_replaced += 1
    return result


class CrossLayerEqualization(GraphPass):
    name = "equalize"
    description = DESCRIPTION
    exact = True
    unit = "pairs"

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return len(equalize(model).pairs)


def equalize_file(src: Path, dst: Path, *, relu6: bool = False, samples: Iterable[Any] | None = None,
                  device: Any = None, check: int = 4) -> Equalization:
    """Equalize the model at ``src`` into ``dst``; with ``samples`` and ``device``, the largest
    change of any output over the first ``check`` samples (relative to that output's peak) is
    measured and reported: ~1e-7 when exact, more with ``relu6``."""
    import itertools

    model = onnx.load(str(src))
    result = equalize(model, relu6=relu6)
    onnx.save(model, str(dst))
    if samples is not None and device is not None and result.pairs:
        worst = 0.0
        for (a, b), _ in device.iter_outputs([src, dst], itertools.islice(samples, check)):
            for name, ref in a.items():
                ref, got = np.asarray(ref, np.float64), np.asarray(b[name], np.float64)
                worst = max(worst, float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12)))
        result.output_change = worst
    return result
