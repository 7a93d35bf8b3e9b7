"""MobileNetV3-style graphs (Hard-Swish, squeeze-excite with Hard-Sigmoid, mean pooling) in INT8.

onnxruntime's CPU EP has no HardSwish kernel: ``quant_pre_process`` inlines it as
``x * HardSigmoid(x)``, and ORT has no QDQ fusion for HardSigmoid either. Left as the quantizer
writes it, every Hard-Swish costs four passes over the tensor (DequantizeLinear, float
HardSigmoid, QuantizeLinear, QLinearMul), and a squeeze-excite's ``ReduceMean`` (how torch's
dynamo exporter writes ``adaptive_avg_pool2d(x, 1)``) runs float between a DQ and a Q in NHWC.
These passes give ORT integer kernels for all of it (measured: ``benchmarks/results/vnni/MOBILENET_V3.md``):

* :class:`ReduceMeanAsGlobalPool` (FP32, exact): ``ReduceMean`` over the spatial axes of a 4-D
  tensor with keepdims is ``GlobalAveragePool``, which ORT quantizes as QLinearGlobalAveragePool.
* :class:`FoldConvHardSigmoid` (FP32, exact up to float rounding): ``HardSigmoid(Conv(x))`` is
  ``Clip(Conv'(x), 0, 1)`` with the Conv's weight and bias scaled by alpha and beta added to the
  bias; the Clip then disappears into the Conv's output quantization (QLinearConv saturates).
* :class:`HardSigmoidAsAdd` (QDQ, exact): ``Q(HardSigmoid(v))`` with an output range inside
  [0, 1] is ``Q'(v + beta/alpha)`` with ``Q'``'s scale divided by alpha, read back through the
  original DequantizeLinear (scale unchanged): the 8-bit codes are the same, the clipping is the
  Q's saturation, and ORT fuses ``DQ -> Add -> Q`` into QLinearAdd. Hard-Swish then runs as
  QLinearAdd + QLinearMul on uint8 data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, attribute


def _rank4_spatial_axes(node: onnx.NodeProto, idx: GraphIndex, ranks: dict[str, int]) -> bool:
    """``node`` (ReduceMean) averages exactly axes 2 and 3 of a 4-D tensor and keeps them."""
    if attribute(node, "keepdims", 1) != 1 or attribute(node, "noop_with_empty_axes", 0):
        return False
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = idx.const(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    rank = ranks.get(node.input[0])
    if axes is None or rank != 4:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    infos = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    if not model.graph.value_info:
        try:
            infos = [*onnx.shape_inference.infer_shapes(model).graph.value_info, *infos]
        except Exception:  # noqa: BLE001 - contrib ops: only the declared shapes then
            pass
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in infos
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}


def reduce_mean_as_global_pool(model: onnx.ModelProto) -> int:
    """Rewrite spatial ``ReduceMean`` (4-D, axes 2 and 3, keepdims) as ``GlobalAveragePool``."""
    idx, ranks = GraphIndex.build(model.graph), _ranks(model)
    changed = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") \
                or not _rank4_spatial_axes(node, idx, ranks):
            continue
        model.graph.node[i].CopyFrom(helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]],
                                                      name=node.name or f"{node.output[0]}__gap"))
        changed += 1
    return changed


def fold_conv_hardsigmoid(model: onnx.ModelProto) -> int:
    """``HardSigmoid(Conv(x))`` -> ``Clip(Conv(x; alpha*W, alpha*b + beta), 0, 1)`` where the Conv
    has constant weights and HardSigmoid is its output's only reader (a squeeze-excite gate)."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for i, hs in enumerate(list(graph.node)):
        if hs.op_type != "HardSigmoid":
            continue
        conv = idx.producer.get(hs.input[0])
        if conv is None or conv.op_type != "Conv" or len(idx.consumers.get(hs.input[0], [])) != 1 \
                or hs.input[0] in idx.graph_outputs or conv.input[1] not in inits \
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
            continue
        alpha, beta = float(attribute(hs, "alpha", 0.2)), float(attribute(hs, "beta", 0.5))
        if alpha <= 0:
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        cout = w.shape[0]
        b = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] \
            else np.zeros(cout, w.dtype)
        # fresh initializers: the originals may be shared with another Conv
        w_name, b_name = f"{conv.input[1]}__hsig_w", f"{conv.output[0]}__hsig_b"
        graph.initializer.extend([numpy_helper.from_array((w * np.float32(alpha)).astype(w.dtype), w_name),
                                  numpy_helper.from_array((b * np.float32(alpha) + np.float32(beta)).astype(w.dtype),
                                                          b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        lo, hi = f"{hs.output[0]}__clip_lo", f"{hs.output[0]}__clip_hi"
        graph.initializer.extend([numpy_helper.from_array(np.array(0.0, w.dtype), lo),
                                  numpy_helper.from_array(np.array(1.0, w.dtype), hi)])
        graph.node[i].CopyFrom(helper.make_node("Clip", [hs.input[0], lo, hi], [hs.output[0]], name=hs.name))
        changed += 1
    if changed:
        used = {n for node in graph.node for n in node.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return changed


def hardsigmoid_as_add(model: onnx.ModelProto) -> int:
    """In a QDQ graph, ``DQ -> HardSigmoid -> Q`` becomes ``DQ -> Add(beta/alpha) -> Q'`` (``Q'``:
    scale / alpha, same zero point), its DequantizeLinear readers unchanged; only where the Q's
    codes cover no value outside [0, 1] (so its saturation is HardSigmoid's clip). Exact."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    changed = 0
    for hs in list(graph.node):
        if hs.op_type != "HardSigmoid":
            continue
        dq, qs = idx.producer.get(hs.input[0]), idx.consumers.get(hs.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(qs) != 1 or qs[0].op_type != "QuantizeLinear" \
                or hs.output[0] in idx.graph_outputs or len(qs[0].input) < 3:
            continue
        q = qs[0]
        alpha, beta = float(attribute(hs, "alpha", 0.2)), float(attribute(hs, "beta", 0.5))
        scale, zp = idx.const(q.input[1]), idx.const(q.input[2])
        if alpha <= 0 or scale is None or zp is None or scale.size != 1 or zp.size != 1 \
                or attribute(q, "output_dtype", 0):
            continue
        info = np.iinfo(zp.dtype)
        s, z = float(scale.ravel()[0]), int(zp.ravel()[0])
        # the lowest code must mean 0 and the highest at most 1 (half a step of float slack)
        if abs((info.min - z) * s) > s / 2 or (info.max - z) * s > 1 + s / 2:
            continue
        readers = idx.consumers.get(q.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers) or q.output[0] in idx.graph_outputs:
            continue
        base = hs.name or hs.output[0]
        new_scale = f"{base}__add_scale"
        graph.initializer.append(numpy_helper.from_array(np.array(s / alpha, scale.dtype).reshape(scale.shape),
                                                         new_scale))
        # the offset as a quantized constant too: ORT's QLinearAdd selector wants DQ on both inputs
        offset = _quantized_constant(graph, f"{base}__offset", beta / alpha, zp.dtype)
        hs.CopyFrom(helper.make_node("Add", [hs.input[0], offset], [hs.output[0]], name=f"{base}__add"))
        q.input[1] = new_scale
        changed += 1
    return changed


def _quantized_constant(graph: onnx.GraphProto, name: str, value: float, dtype: np.dtype) -> str:
    """``DequantizeLinear(code, scale, zero point)`` of the scalar ``value`` at the extreme code of
    ``dtype`` (so the scale is as fine as it can be); returns the DQ's output name."""
    info = np.iinfo(dtype)
    zero = 0 if value >= 0 or info.min < 0 else info.max
    code = info.max if value >= 0 else info.min
    scale = abs(value) / abs(code - zero) if value else 1.0
    graph.initializer.extend([numpy_helper.from_array(np.array(code, dtype), f"{name}_quantized"),
                              numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                              numpy_helper.from_array(np.array(zero, dtype), f"{name}_zero_point")])
    graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                                               f"{name}_zero_point"], [name], name=f"{name}_DequantizeLinear"))
    return name


class ReduceMeanAsGlobalPool(GraphPass):
    name = "reduce_mean_as_global_pool"
    description = ("spatial ReduceMean (4-D, axes 2 and 3) rewritten as GlobalAveragePool (exact), which "
                   "onnxruntime runs as QLinearGlobalAveragePool in INT8")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return reduce_mean_as_global_pool(model)


class FoldConvHardSigmoid(GraphPass):
    name = "fold_conv_hardsigmoid"
    description = ("HardSigmoid after a Conv folded into the Conv's weight and bias plus Clip(0, 1) (exact "
                   "up to float rounding): the Clip becomes the QLinearConv's output saturation")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return fold_conv_hardsigmoid(model)


class HardSigmoidAsAdd(GraphPass):
    name = "hardsigmoid_as_add"
    description = ("quantized HardSigmoid rewritten as Add with its Q's scale divided by alpha (exact: same "
                   "codes, the Q's saturation clips): onnxruntime fuses it into QLinearAdd")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return hardsigmoid_as_add(model)


#: FP32 passes run on the prepared graph (after quant_pre_process inlined HardSwish).
PREPARE_PASSES: tuple[GraphPass, ...] = (ReduceMeanAsGlobalPool(), FoldConvHardSigmoid())
