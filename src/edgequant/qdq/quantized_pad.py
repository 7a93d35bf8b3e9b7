"""``DQ -> Pad -> Q`` with one scale and zero point run as a Pad on the 8-bit tensor (exact).

onnxruntime's QDQ fusions drop the Q/DQ pair around Gather, Reshape, Transpose, Squeeze, Unsqueeze,
MaxPool and Resize, but not around Pad: every Pad of a quantized model then runs in float between a
DequantizeLinear and a QuantizeLinear. MediaPipe's detectors widen every residual with a channel Pad
(BlazeFace: 11 of them); on the face detector, x86-vnni, 1 thread, those 11 float Pads and their 22
Q/DQ nodes were about a fifth of the INT8 kernel time (benchmarks/FINDINGS.md, issue 14).

A Pad only copies values and writes its pad value, so where the Q after it has the DQ's scale and
zero point (onnxruntime's quantizer gives a Pad its input's parameters) and the pad value is a code
of that grid (0.0 is the zero point), padding the codes gives exactly the codes the Q would have
written. Reflect and edge padding copy codes only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.graph_pass import GraphPass, PassContext
from edgequant.qdq.graph import GraphIndex, attribute, drop_nodes

#: onnxruntime's CPU Pad has 8-bit kernels; 16-bit codes stay on the float path.
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


def _same_grid(idx: GraphIndex, dq: onnx.NodeProto, q: onnx.NodeProto) -> tuple[float, np.ndarray] | None:
    """(scale, zero point) when ``dq`` and ``q`` are per-tensor with identical constants, else None."""
    if len(dq.input) < 3 or len(q.input) < 3 or not dq.input[2] or not q.input[2]:
        return None
    s_dq, z_dq, s_q, z_q = (idx.const(n) for n in (dq.input[1], dq.input[2], q.input[1], q.input[2]))
    if any(v is None for v in (s_dq, z_dq, s_q, z_q)):
        return None
    if s_dq.size != 1 or z_dq.size != 1 or z_dq.dtype != z_q.dtype or z_dq.dtype not in EIGHT_BIT:
        return None
    if not (np.array_equal(s_dq, s_q) and np.array_equal(z_dq, z_q)):
        return None
    return float(s_dq.reshape(())), z_dq.reshape(())


def _pad_code(value: float, scale: float, zero_point: np.ndarray) -> np.ndarray | None:
    """The code that dequantizes to exactly ``value`` on this grid, else None."""
    info = np.iinfo(zero_point.dtype)
    code = int(np.rint(np.float32(value) / np.float32(scale))) + int(zero_point)
    if not info.min <= code <= info.max:
        return None
    back = (np.float32(code) - np.float32(zero_point)) * np.float32(scale)
    return np.asarray(code, zero_point.dtype) if back == np.float32(value) else None


def pad_on_quantized(model: onnx.ModelProto) -> int:
    """Rewrite each ``DQ(x) -> Pad -> Q`` on one 8-bit per-tensor grid as ``Pad(x)`` (the codes),
    which keeps the Q's output name; the DQ goes too when the Pad was its only reader. Returns how
    many Pads now run on codes."""
    graph = model.graph
    idx = GraphIndex.build(graph)
    drop: set[int] = set()
    changed = 0
    for pad in graph.node:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.output[0] in idx.graph_outputs:
            continue     # before opset 11 the pads are an attribute: such graphs are upgraded before quantizing
        dq = idx.producer.get(pad.input[0])
        readers = idx.consumers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        q = readers[0]
        grid = _same_grid(idx, dq, q)
        if grid is None:
            continue
        inputs = [dq.input[0], pad.input[1]]
        mode = attribute(pad, "mode", b"constant")
        if mode in (b"constant", "constant"):
            given = pad.input[2] if len(pad.input) > 2 else ""
            value = idx.const(given) if given else np.zeros((), np.float32)
            code = None if value is None or value.size != 1 else _pad_code(float(value.reshape(())), *grid)
            if code is None:
                continue  # a pad value between codes: the Q would round it, so keep the float path
            code_name = f"{pad.name or pad.output[0]}_pad_code"
            graph.initializer.append(numpy_helper.from_array(code, code_name))
            inputs.append(code_name)
        elif len(pad.input) > 3:
            inputs.append("")
        inputs.extend(pad.input[3:4])            # axes (opset 18)
        del pad.input[:]
        pad.input.extend(inputs)
        pad.output[0] = q.output[0]
        drop.add(id(q))
        if idx.single_reader(dq.output[0]):
            drop.add(id(dq))
        changed += 1
    drop_nodes(graph, drop)
    return changed


class PadOnQuantized(GraphPass):
    name = "pad_on_quantized"
    description = ("Pads between a DequantizeLinear and a QuantizeLinear of one grid run on the 8-bit codes (exact): "
                   "onnxruntime's QDQ fusions leave them in float with a Q/DQ pair each")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return pad_on_quantized(model)
