"""Wide convolutions steered to onnxruntime's general INT8 GEMM, which runs on AMX tiles (exact).

MLAS runs a QLinearConv whose int8 weights are symmetric (zero point 0) in its own direct
convolution kernels, written for VNNI; only a weight with a non-zero zero point takes the im2col +
general GEMM path, and that GEMM uses AMX-INT8 tiles where the CPU has them. Measured on an Intel Xeon
with AMX, 1 thread, one QLinearConv (benchmarks/FINDINGS.md, issue 14): 3x3 256 -> 256 at 14x14
0.42 -> 0.25 ms, 3x3 512 at 7x7 0.60 -> 0.32 ms, 1x1 576 at 7x7 0.087 -> 0.058 ms; below 128 input
channels the tiles do not pay for the im2col (3x3 32 at 112x112 0.71 -> 0.88 ms, 1x1 96 at 28x28
0.062 -> 0.070 ms). Symmetric int8 weights use codes -127..127, so ``w - 1`` with zero point -1
dequantizes to the same values: the outputs are bit-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, attribute

#: Input channels from which the tiles' GEMM beats MLAS's symmetric conv kernels (measured above).
MIN_INPUT_CHANNELS = 128
SHIFT = -1


def _wide(weight_dims, group: int) -> bool:
    return group == 1 and len(weight_dims) >= 3 and weight_dims[1] >= MIN_INPUT_CHANNELS


def has_wide_conv(model: onnx.ModelProto) -> bool:
    """Whether the FP32 ``model`` has a convolution the steering would touch (read from shapes only:
    the model may be loaded without its weights' data)."""
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return any(n.op_type == "Conv" and len(n.input) > 1 and _wide(dims.get(n.input[1], ()), attribute(n, "group", 1))
               for n in model.graph.node)


def steer_wide_convs_to_amx(model: onnx.ModelProto) -> int:
    """Rewrite each group-1 ``Conv <- DQ(W int8, zero point 0)`` with at least MIN_INPUT_CHANNELS
    input channels to ``DQ(W - 1, zero point -1)``; return how many."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    changed = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        dq = idx.producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        w_init, zp_init = idx.initializers.get(dq.input[0]), idx.initializers.get(dq.input[2])
        if w_init is None or zp_init is None or not (idx.single_reader(dq.input[0]) and idx.single_reader(dq.input[2])):
            continue
        w, zp = numpy_helper.to_array(w_init), numpy_helper.to_array(zp_init)
        if w.dtype != np.int8 or not _wide(w.shape, attribute(conv, "group", 1)) or np.any(zp != 0) or w.min() < -127:
            continue
        w_init.CopyFrom(numpy_helper.from_array((w.astype(np.int16) + SHIFT).astype(np.int8), dq.input[0]))
        zp_init.CopyFrom(numpy_helper.from_array(np.full_like(zp, SHIFT), dq.input[2]))
        changed += 1
    return changed


class SteerWideConvsToAmx(GraphPass):
    name = "steer_wide_convs_to_amx"
    description = (f"int8 weights of convolutions with >= {MIN_INPUT_CHANNELS} input channels given zero point "
                   f"{SHIFT} (codes shifted, exact): onnxruntime then runs them as a general GEMM on the CPU's "
                   "AMX-INT8 tiles")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return steer_wide_convs_to_amx(model)
