"""Depthwise convolutions widened to a multiple of 16 channels with zero channels (exact in FP32).

onnxruntime's fast INT8 depthwise kernel on x86 (MLAS's symmetric "ConvSym" depthwise path) takes
only group counts that are multiples of 16; any other count runs a generic kernel. One QLinearConv
3x3 at 64x64, x86-vnni, 1 thread: 28 channels 308 us, 32 channels 154 us; 88 -> 543 us, 96 -> 417 us
(benchmarks/FINDINGS.md, issue 14). MobileNetV3 (72, 88, 120) and BlazeFace (24 ... 88) are full of
such counts.

The FP32 graph is rewritten before quantization: every tensor that carries the depthwise conv's
channels (a *region*: joined through element-wise ops, pooling and the depthwise conv itself) gets
zero channels appended. The convolutions that write the region get zero filters and zero biases,
the convolutions that read it get zero input weights, per-channel constants get zeros; the real
channels compute exactly as before, and the new ones hold 0 (calibration ranges do not move). A
channel ``Pad`` between two regions (BlazeFace's widening residual) pads only what is left, and
disappears where both sides end up equally wide. A region that touches anything else (a graph
output, Concat, Reshape, a Gemm, ...) is left as it is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, attribute, drop_nodes, use_counts

ALIGN = 16
#: Channel-wise ops a region passes through -> whether they keep a zero channel zero.
UNARY_KEEPS_ZERO = {"Relu": True, "LeakyRelu": True, "HardSwish": True, "Tanh": True, "Identity": True,
                    "MaxPool": True, "AveragePool": True, "GlobalAveragePool": True, "GlobalMaxPool": True,
                    "Clip": True, "HardSigmoid": False, "Sigmoid": False}
BINARY = ("Add", "Sub", "Mul")


class _Regions:
    """Union-find over tensor names, with what each region needs to be rewritten."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, t: str) -> str:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class _Plan:
    writers: list[onnx.NodeProto] = field(default_factory=list)     # group-1 Convs writing the region
    readers: list[onnx.NodeProto] = field(default_factory=list)     # group-1 Convs reading it
    depthwise: list[onnx.NodeProto] = field(default_factory=list)
    constants: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)   # (binary op, input index)
    channels: set[int] = field(default_factory=set)
    frozen: bool = False
    keeps_zero: bool = True


def _conv_kind(node: onnx.NodeProto, w: np.ndarray | None) -> str:
    if w is None or w.ndim < 3:
        return "other"
    group = attribute(node, "group", 1)
    if group == 1:
        return "dense"
    return "depthwise" if group == w.shape[0] and w.shape[1] == 1 else "other"


def _channel_pad(node: onnx.NodeProto, idx: GraphIndex) -> int | None:
    """Channels a constant zero ``Pad`` appends to axis 1 of an NCHW tensor (and nothing else), else None."""
    if len(node.input) < 2 or attribute(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    pads = idx.const(node.input[1])
    value = idx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
    if pads is None or pads.size != 8 or value is None or np.any(value != 0) or len(node.input) > 3:
        return None
    others = np.delete(pads, 5)
    return int(pads[5]) if not others.any() and pads[5] > 0 else None


def pad_depthwise_channels(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns how many depthwise convs now have a multiple of 16 channels."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    uses = use_counts(graph)
    regions = _Regions()
    plans: dict[str, _Plan] = defaultdict(_Plan)
    frozen: set[str] = {t.name for t in (*graph.input, *graph.output)}
    keeps_zero_not: set[str] = set()
    links: list[tuple[onnx.NodeProto, str, str, int]] = []      # (Pad, input, output, channels added)
    roles: list[tuple[str, str, object]] = []                   # (tensor, role, payload), resolved after unions

    def shared(name: str) -> bool:
        return uses.get(name, 0) > 1

    def constant(name: str) -> bool:
        producer = idx.producer.get(name)
        return name in idx.initializers or (producer is not None and producer.op_type == "Constant")

    for node in graph.node:
        op = node.op_type
        acts = [i for i in node.input if i and not constant(i)]
        if op == "Conv":
            w = idx.const(node.input[1]) if len(node.input) > 1 and node.input[1] in idx.initializers else None
            kind = _conv_kind(node, w)
            if kind == "other" or shared(node.input[1]) or (len(node.input) > 2 and node.input[2] and shared(node.input[2])):
                frozen.update([node.input[0], node.output[0]])
            elif kind == "dense":
                roles += [(node.input[0], "reader", (node, w.shape[1])), (node.output[0], "writer", (node, w.shape[0]))]
            else:
                regions.union(node.input[0], node.output[0])
                roles.append((node.output[0], "depthwise", (node, w.shape[0])))
        elif op in UNARY_KEEPS_ZERO and acts:
            regions.union(acts[0], node.output[0])
            keeps = UNARY_KEEPS_ZERO[op]
            if op == "Clip":
                lo, hi = (idx.const(i) if i else None for i in (list(node.input) + ["", ""])[1:3])
                keeps = (lo is None or float(lo) <= 0.0) and (hi is None or float(hi) >= 0.0)
            if not keeps:
                keeps_zero_not.add(node.output[0])
        elif op in BINARY and acts:
            for a in acts:
                regions.union(a, node.output[0])
            for i, name in enumerate(node.input):
                if name not in acts:
                    roles.append((node.output[0], "constant", (node, i)))
        elif op == "Pad" and acts and (added := _channel_pad(node, idx)) is not None:
            links.append((node, acts[0], node.output[0], added))
        else:
            frozen.update(i for i in node.input if i and i not in idx.initializers)
            frozen.update(node.output)

    for tensor, role, payload in roles:
        plan = plans[regions.find(tensor)]
        if role == "constant":
            node, i = payload
            value = idx.const(node.input[i])
            if value.size == 1:
                continue
            if node.input[i] not in idx.initializers or shared(node.input[i]) or value.ndim < 3 or value.shape[-1] != 1 or value.shape[-2] != 1:
                plan.frozen = True
                continue
            plan.constants.append(payload)
            plan.channels.add(value.shape[-3])
        else:
            node, channels = payload
            getattr(plan, {"reader": "readers", "writer": "writers", "depthwise": "depthwise"}[role]).append(node)
            plan.channels.add(channels)
    for t in frozen:
        plans[regions.find(t)].frozen = True
    for t in keeps_zero_not:
        plans[regions.find(t)].keeps_zero = False

    def channels_of(root: str) -> int | None:
        plan = plans[root]
        return next(iter(plan.channels)) if len(plan.channels) == 1 else None

    width: dict[str, int] = {}
    for root, plan in list(plans.items()):
        c = channels_of(root)
        if c is None:
            plan.frozen = True
            continue
        unaligned = any(attribute(n, "group", 1) % ALIGN for n in plan.depthwise)
        width[root] = -(-c // ALIGN) * ALIGN if unaligned and not plan.frozen else c
    pads = []
    for node, a, b, k in links:
        a, b = regions.find(a), regions.find(b)
        if a in width and b in width and channels_of(a) + k == channels_of(b):
            pads.append((node, a, b, k))
            continue
        for r in (a, b):      # a Pad between regions whose channels are unknown: neither side moves
            plans[r].frozen = True
            if r in width:
                width[r] = channels_of(r)
    # a Pad's output region is at least as wide as its input's: the input's new channels become
    # real (zero) channels of the output, so they must hold zeros; where that cannot be, the input
    # region stays as it is
    moved = True
    while moved:
        moved = False
        for node, a, b, k in pads:
            wa, ca = width[a], channels_of(a)
            if wa == ca or (wa <= width[b] and plans[a].keeps_zero):
                continue
            if plans[a].keeps_zero and not plans[b].frozen:
                width[b] = wa
            else:
                plans[a].frozen, width[a] = True, ca
            moved = True

    changed = 0
    new_inits: list[onnx.TensorProto] = []
    for root, plan in plans.items():
        c = channels_of(root)
        if plan.frozen or c is None or width[root] == c:
            continue
        extra = width[root] - c
        for node in plan.writers + plan.depthwise:
            _pad_initializer(idx, node.input[1], axis=0, extra=extra)
            _pad_bias(idx, node, width[root], new_inits)
        for node in plan.depthwise:
            next(a for a in node.attribute if a.name == "group").i = width[root]
            changed += 1
        for node in plan.readers:
            _pad_initializer(idx, node.input[1], axis=1, extra=extra)
        for node, i in plan.constants:
            value = idx.const(node.input[i])
            _pad_initializer(idx, node.input[i], axis=value.ndim - 3, extra=extra)
        _widen_value_info(graph, regions, root, c, width[root])
    _rewrite_pads(graph, pads, width, idx, new_inits)
    graph.initializer.extend(new_inits)
    if changed:
        _drop_stale_shapes(graph, idx)
    return changed


def _pad_initializer(idx: GraphIndex, name: str, *, axis: int, extra: int) -> None:
    value = idx.initializers[name]
    array = numpy_helper.to_array(value)
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    value.CopyFrom(numpy_helper.from_array(np.pad(array, widths), name))


def _drop_stale_shapes(graph: onnx.GraphProto, idx: GraphIndex) -> None:
    """Some exporters also describe initializers in value_info or graph.input; a widened weight's
    old shape there would contradict shape inference (PP-LCNet's squeeze-excite weights)."""
    stale = set(idx.initializers)
    keep = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for vi in graph.input:
        if vi.name in shapes and vi.name in stale:
            dims = vi.type.tensor_type.shape.dim
            for d, n in zip(dims, shapes[vi.name]):
                d.dim_value = n


def _pad_bias(idx: GraphIndex, node: onnx.NodeProto, channels: int, new_inits: list) -> None:
    if len(node.input) > 2 and node.input[2]:
        _pad_initializer(idx, node.input[2], axis=0, extra=channels - idx.const(node.input[2]).shape[0])
        return
    name = f"{node.name or node.output[0]}_zero_bias"
    dtype = numpy_helper.to_array(idx.initializers[node.input[1]]).dtype
    new_inits.append(numpy_helper.from_array(np.zeros(channels, dtype), name))
    if len(node.input) < 3:
        node.input.append(name)
    else:
        node.input[2] = name


def _widen_value_info(graph: onnx.GraphProto, regions: _Regions, root: str, old: int, new: int) -> None:
    for vi in graph.value_info:
        if regions.parent.get(vi.name) is not None and regions.find(vi.name) == root:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) > 1 and dims[1].dim_value == old:
                dims[1].dim_value = new


def _rewrite_pads(graph: onnx.GraphProto, pads, width: dict, idx: GraphIndex, new_inits: list) -> None:
    """Each channel Pad between two regions pads what is left; one with nothing left is removed."""
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for node, a, b, k in pads:
        left = width[b] - width[a]
        if left == k:
            continue
        if left == 0:
            rename[node.output[0]] = node.input[0]
            drop.add(id(node))
            continue
        amounts = idx.const(node.input[1]).copy()
        amounts[5] = left
        name = f"{node.name or node.output[0]}_channel_pads"
        new_inits.append(numpy_helper.from_array(amounts.astype(np.int64), name))
        node.input[1] = name
    for n in graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    drop_nodes(graph, drop)
    used = {i for n in graph.node for i in n.input}
    stale = [t for t in graph.initializer if t.name in {p.input[1] for p, *_ in pads} and t.name not in used]
    for t in stale:
        graph.initializer.remove(t)


class PadDepthwiseChannels(GraphPass):
    name = "pad_depthwise_channels"
    description = ("depthwise convolutions widened with zero channels to a multiple of 16 (exact): onnxruntime's "
                   "fast x86 INT8 depthwise kernel takes only such channel counts")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return pad_depthwise_channels(model)
