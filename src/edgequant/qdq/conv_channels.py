"""Quantized Conv inputs padded to a multiple of 4 channels (exact), for onnxruntime's x86 INT8 kernels.

MLAS's u8s8 convolution takes a slow path when a non-grouped Conv's input channel count is not a
multiple of 4, which is every image net's stem (3 channels). Measured on x86-vnni, 1 thread, a stem
alone: resnet18's 7x7 4.29 -> 1.91 ms (FP32 6.49), mobilenet_v2's 3x3 0.68 -> 0.44 ms (FP32 0.44), the
outputs bit-identical (benchmarks/FINDINGS.md, issue 14). The padding runs on the uint8 activation
(``Pad`` with the activation's zero point as its value, so the new channels are real zeros) and the
int8 weight gets input channels holding its zero point: every product they add is exactly 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, attribute, insert_after_producers

MULTIPLE = 4
#: Targets whose INT8 convolution was measured faster with channels padded for MLAS's kernels (this
#: module's stems, qdq.depthwise_channels); AVX2-only machines have not been measured yet. AMX machines
#: run these small-channel convolutions in the same VNNI kernels (the tiles take only wide GEMMs).
CHANNEL_PAD_TARGETS = ("x86-vnni", "x86-amx")
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
MAX_CHANNELS = 16     # stems: the pad copies the activation once, cheap only where channels are few


def _padded_weight(w: np.ndarray, zero_point: np.ndarray, channels: int) -> np.ndarray:
    """``w`` [Cout, Cin, ...] with input channels up to ``channels`` holding each output channel's zero point."""
    out = np.empty((w.shape[0], channels) + w.shape[2:], w.dtype)
    out[...] = np.asarray(zero_point, w.dtype).reshape((-1,) + (1,) * (w.ndim - 1))
    out[:, :w.shape[1]] = w
    return out


def pad_conv_input_channels(model: onnx.ModelProto) -> int:
    """Rewrite every ``DQ(x) -> Conv <- DQ(W)`` (group 1, input channels < MAX_CHANNELS and not a
    multiple of 4, per-tensor activation) to read ``DQ(Pad(x))`` and a zero-extended weight."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}     # quantized tensor -> the Pads that read it
    changed = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or attribute(conv, "group", 1) != 1 or len(conv.input) < 2:
            continue
        dq_x, dq_w = idx.producer.get(conv.input[0]), idx.producer.get(conv.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        if len(dq_x.input) < 3 or dq_w.input[0] not in inits or len(dq_w.input) < 3:
            continue
        x_zp, w_zp = idx.const(dq_x.input[2]), idx.const(dq_w.input[2])
        w = numpy_helper.to_array(inits[dq_w.input[0]])
        if x_zp is None or x_zp.size != 1 or w_zp is None or w.ndim < 3 or attribute(dq_w, "axis", 1) != 0 and w_zp.size > 1:
            continue
        if x_zp.dtype not in EIGHT_BIT or w.dtype not in EIGHT_BIT:
            continue       # 16-bit activations: onnxruntime's CPU Pad has no 16-bit kernel (and MLAS no such path)
        cin = w.shape[1]
        if cin % MULTIPLE == 0 or cin >= MAX_CHANNELS:
            continue
        if not (idx.single_reader(conv.input[0]) and idx.single_reader(conv.input[1])
                and idx.single_reader(dq_w.input[0])):
            continue       # shared tensors: a copy would cost more than the pad saves
        target = -(-cin // MULTIPLE) * MULTIPLE
        amounts = np.zeros(2 * w.ndim, np.int64)
        amounts[w.ndim + 1] = target - cin
        stem = conv.name or conv.output[0]
        pads_name, padded = f"{stem}_channel_pads", f"{dq_x.input[0]}_channel_padded_{stem}"
        graph.initializer.append(numpy_helper.from_array(amounts, pads_name))
        readers.setdefault(dq_x.input[0], []).append(
            helper.make_node("Pad", [dq_x.input[0], pads_name, dq_x.input[2]], [padded], name=f"{stem}_channel_pad",
                             mode="constant"))
        dq_x.input[0] = padded
        inits[dq_w.input[0]].CopyFrom(numpy_helper.from_array(_padded_weight(w, w_zp, target), dq_w.input[0]))
        changed += 1
    insert_after_producers(model, readers)
    return changed


class PadConvInputChannels(GraphPass):
    name = "pad_conv_input_channels"
    description = ("quantized Conv inputs with few channels (a stem's 3) padded to a multiple of 4 in uint8, "
                   "the weight zero-extended (exact): onnxruntime's x86 INT8 convolution is 1.5-2x faster there")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return pad_conv_input_channels(model)
