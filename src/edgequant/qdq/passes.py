"""ONNX graph passes run before and after ORT's quantizer so ORT's QDQ fusions fire.

Each pass mutates a ModelProto in place and returns how many places it changed, so the
recipe can report what it did. They are exact rewrites: none changes the model's numerics.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, drop_nodes, opset_of

#: Per-channel DequantizeLinear (axis attribute) needs ai.onnx opset 13.
MIN_QDQ_OPSET = 13


def upgrade_opset(model: onnx.ModelProto, min_opset: int = MIN_QDQ_OPSET) -> tuple[onnx.ModelProto, int]:
    """Return the model converted to at least ``min_opset`` and the opset it had before."""
    from edgequant.model import upgrade_opset as upgrade_checked

    return upgrade_checked(model, min_opset), opset_of(model)


def _is_activation_q(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    """A QuantizeLinear of a runtime tensor (not a constant weight)."""
    return node.op_type == "QuantizeLinear" and idx.const(node.input[0]) is None


def activations_s8_to_u8(model: onnx.ModelProto) -> int:
    """Rewrite int8 activation Q/DQ groups to uint8 (zero point + 128; same real values).

    Why: on x86 ORT's QDQ selectors only accept uint8 activations, and its own S8->U8 pass
    (``QDQS8ToU8Transformer``) skips any Q that feeds more than one DQ, which is every
    tensor with fan-out (residual inputs). Doing the rewrite in the file makes fan-out
    irrelevant. A Q whose int8 output also reaches a non-DQ consumer is left alone.
    Returns the number of Q nodes rewritten.
    """
    graph = model.graph
    idx = GraphIndex.build(graph)
    changed = 0
    new_inits: list[onnx.TensorProto] = []
    for q in list(graph.node):
        if not _is_activation_q(q, idx) or len(q.input) < 3 or not q.input[2]:
            continue
        zp = idx.const(q.input[2])
        if zp is None or zp.dtype != np.int8 or zp.size != 1:
            continue
        dqs = idx.consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or q.output[0] in idx.graph_outputs:
            continue
        if any(len(d.input) < 3 or idx.const(d.input[2]) is None
               or idx.const(d.input[2]).astype(np.int32).ravel()[0] != int(zp.ravel()[0]) for d in dqs):
            continue
        u8 = (zp.astype(np.int16) + 128).astype(np.uint8).reshape(zp.shape)
        name = f"{q.output[0]}_zero_point_u8"
        new_inits.append(numpy_helper.from_array(u8, name))
        q.input[2] = name
        for d in dqs:
            d.input[2] = name
        changed += 1
    graph.initializer.extend(new_inits)
    if changed:
        # value_info for the retyped tensors would now be wrong; drop stale int8 entries.
        retyped = {q.output[0] for q in graph.node if q.op_type == "QuantizeLinear"
                   and q.input[2].endswith("_zero_point_u8")}
        keep = [vi for vi in graph.value_info if vi.name not in retyped]
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return changed


def fold_identity_qdq(model: onnx.ModelProto) -> int:
    """Remove ``DQ -> Q`` chains that requantize with identical scale, zero point and type.

    Such pairs appear when two quantized ops meet through a no-op; ORT's fusions see a
    float island there. Returns the number of chains removed.
    """
    graph = model.graph
    idx = GraphIndex.build(graph)
    removed = 0
    drop: set[int] = set()
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        qs = idx.consumers.get(dq.output[0], [])
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear" or dq.output[0] in idx.graph_outputs:
            continue
        q = qs[0]
        if len(q.input) < 3 or len(dq.input) < 3:
            continue
        vals = [idx.const(n) for n in (dq.input[1], q.input[1], dq.input[2], q.input[2])]
        if any(v is None for v in vals):
            continue
        s_dq, s_q, z_dq, z_q = vals
        if s_dq.shape != s_q.shape or not np.array_equal(s_dq, s_q) or z_dq.dtype != z_q.dtype \
                or not np.array_equal(z_dq, z_q):
            continue
        # Consumers of Q's output read DQ's quantized input directly.
        for c in idx.consumers.get(q.output[0], []):
            for i, name in enumerate(c.input):
                if name == q.output[0]:
                    c.input[i] = dq.input[0]
        if q.output[0] in idx.graph_outputs:
            continue
        drop.update({id(dq), id(q)})
        removed += 1
    drop_nodes(graph, drop)
    return removed


def diagnose_float_node(node: onnx.NodeProto, idx: GraphIndex) -> str:
    """Most likely reason ORT left a compute node float, read from its optimized graph."""
    data_inputs = [i for i in node.input[:2] if i]
    producers = [idx.producer.get(i) for i in data_inputs]
    dqs = [p for p in producers if p is not None and p.op_type == "DequantizeLinear"]
    if not dqs:
        return "inputs not quantized (excluded op type, or no calibration range for them)"
    unquantized = [i for i, p in zip(data_inputs, producers)
                   if (p is None or p.op_type != "DequantizeLinear") and idx.const(i) is None]
    if unquantized:
        return f"input {unquantized[0]!r} not quantized"
    act_zp = idx.const(dqs[0].input[2]) if len(dqs[0].input) > 2 else None
    if act_zp is not None and act_zp.dtype == np.int8:
        return "int8 activation on x86 (ORT's CPU fusions take uint8 activations only)"
    outs = idx.consumers.get(node.output[0], [])
    if not outs or any(c.op_type != "QuantizeLinear" for c in outs):
        return "output not quantized (no QuantizeLinear after it) and no float-output fusion matched"
    out_zp = idx.const(outs[0].input[2]) if len(outs[0].input) > 2 else None
    if act_zp is not None and out_zp is not None and act_zp.dtype != out_zp.dtype:
        return "input and output quantized types differ"
    return "no ORT QDQ selector matched (unsupported attributes or types)"


def drop_zero_bias_zero_points(model: onnx.ModelProto) -> int:
    """Remove all-zero int32 zero points from bias DequantizeLinear nodes (optional input).

    Per-channel quantization stores one int32 zero point per output channel for every
    bias; they are always 0 and the input is optional, so this saves 4 bytes per channel
    (about 2% of a mobilenet_v2) without changing any value. Returns nodes changed.
    """
    graph = model.graph
    idx = GraphIndex.build(graph)
    changed = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or not dq.input[2]:
            continue
        x, zp = idx.const(dq.input[0]), idx.const(dq.input[2])
        if x is None or zp is None or x.dtype != np.int32 or np.any(zp):
            continue
        del dq.input[2]
        changed += 1
    if changed:
        used = {i for n in graph.node for i in n.input}
        keep = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return changed


# ---- the same rewrites behind the pass interface (recipes list them; reports describe them) ----

class FoldIdentityQdq(GraphPass):
    name = "fold_identity_qdq"
    description = "removes DequantizeLinear->QuantizeLinear pairs with equal scale and zero point (exact)"

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return fold_identity_qdq(model)


class DropZeroBiasZeroPoints(GraphPass):
    name = "drop_zero_bias_zero_points"
    description = "drops all-zero int32 bias zero points so ORT's QDQ selectors accept the bias (exact)"

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return drop_zero_bias_zero_points(model)


class ActivationsToUint8(GraphPass):
    name = "activations_s8_to_u8"
    unit = "tensors"
    description = ("rewrites int8 activation Q/DQ to uint8 (zero point + 128, same values) so ORT's x86 "
                   "fusions fire on fan-out tensors too")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return activations_s8_to_u8(model)
