"""What Hexagon HTP's op validation needs beyond ORT's QNN recipe, found on the HTP backend.

Each rule names the quantization choice HTP rejects (the node then runs on the CPU EP, with a
round trip for its tensors) and what it accepts instead. Measured with onnxruntime-qnn 2.7.0's
HTP backend (tests/test_qnn_htp.py keeps each rule honest):
- LayerNormalization: a symmetric int8 scale (what our symmetric-int8-weights rule writes) is
  rejected, in 8- and 16-bit activations alike; a uint8 scale runs on HTP.
- Pad (constant 0) of a tensor whose zero point is not 0: the padded values are the raw 0, not
  the zero point; channel pads are rewritten as Concat with zeros (:func:`channel_pads_as_concat`).
- Erf is not taken (each erf-form GELU ran on the CPU): rewritten as one com.microsoft Gelu
  (:mod:`.gelu_fusion`), which runs on HTP.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_pass import GraphPass, PassContext
from .gelu_fusion import ErfGeluAsGelu
from .graph import static_dims


def uint8_weight_tensors(model: onnx.ModelProto) -> list[str]:
    """Initializers that HTP needs as uint8 rather than the recipe's symmetric int8."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in inits:
            out.append(node.input[1])
    return out


def weight_overrides(model: onnx.ModelProto) -> dict:
    """ORT ``TensorQuantOverrides`` entries for :func:`uint8_weight_tensors`."""
    from onnxruntime.quantization import QuantType

    return {name: [{"quant_type": QuantType.QUInt8}] for name in uint8_weight_tensors(model)}


def _const_ints(model: onnx.ModelProto, name: str) -> list[int] | None:
    from onnx import numpy_helper

    init = next((i for i in model.graph.initializer if i.name == name), None)
    return None if init is None else [int(v) for v in numpy_helper.to_array(init).ravel()]


def _channel_only_zero_pad(model: onnx.ModelProto, pad: onnx.NodeProto) -> bool:
    """A constant-mode Pad of an NCHW tensor that adds zero channels and nothing else."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant") or len(pad.input) < 2:
        return False
    if len(pad.input) > 2 and pad.input[2]:
        value = next((i for i in model.graph.initializer if i.name == pad.input[2]), None)
        if value is None or numpy_helper.to_array(value).ravel().tolist() not in ([0.0], [0]):
            return False
    if len(pad.input) > 3 and pad.input[3]:
        return False                                   # explicit axes: keep it simple, leave it
    pads = _const_ints(model, pad.input[1])
    if pads is None or len(pads) % 2 or len(pads) < 4:
        return False
    rank = len(pads) // 2
    return all(p == 0 for i, p in enumerate(pads) if i % rank != 1) and any(pads[i] for i in (1, rank + 1))


def channel_pads_as_concat(model: onnx.ModelProto) -> int:
    """Rewrite ``Pad(x, zero channels)`` as ``Concat(x, Mul(Slice(x, first k channels), 0))`` (exact).

    Why: HTP fills the padded values of a constant-mode Pad with the raw 0, not the tensor's zero
    point, i.e. with ``-zero_point * scale`` (measured on onnxruntime-qnn 2.7.0: -10 to -12
    instead of 0 after a Conv, an Add or a MaxPool; right only when the zero point is 0, as after a
    Relu, and not every time elsewhere). BlazeFace-style blocks widen their residuals exactly this
    way; on the face-landmark model it turned the face-presence head into a constant 0 once the
    PRelus were decomposed (benchmarks/FINDINGS.md). A quantized multiply by zero lands exactly on
    the zero point, and Concat shares its output's encoding with its inputs, so the zeros stay 0.
    Only pads of at most as many channels as the tensor has are rewritten (the Slice needs them)."""
    from onnx import helper, numpy_helper

    channels_of = static_dims(model, 1)
    new_nodes, extra, changed, dropped = [], [], 0, set()
    for node in model.graph.node:
        if node.op_type != "Pad" or not _channel_only_zero_pad(model, node):
            new_nodes.append(node)
            continue
        pads = _const_ints(model, node.input[1]) or []
        rank = len(pads) // 2
        before, after = pads[1], pads[rank + 1]
        channels = channels_of.get(node.input[0])
        if channels is None or max(before, after) > channels:
            new_nodes.append(node)
            continue
        base, x = node.name or node.output[0], node.input[0]
        dropped.update(node.input[1:])
        parts = []
        for side, k in (("before", before), ("after", after)):
            if not k:
                continue
            names = {w: f"{base}__{side}_{w}" for w in ("starts", "ends", "axes", "slice", "zeros")}
            extra += [numpy_helper.from_array(np.array([0], np.int64), names["starts"]),
                      numpy_helper.from_array(np.array([k], np.int64), names["ends"]),
                      numpy_helper.from_array(np.array([1], np.int64), names["axes"])]
            new_nodes += [helper.make_node("Slice", [x, names["starts"], names["ends"], names["axes"]],
                                           [names["slice"]], name=names["slice"]),
                          helper.make_node("Mul", [names["slice"], f"{base}__zero"], [names["zeros"]],
                                           name=names["zeros"])]
            parts.append((side, names["zeros"]))
        extra.append(numpy_helper.from_array(np.array(0.0, np.float32), f"{base}__zero"))
        order = [z for side, z in parts if side == "before"] + [x] + [z for side, z in parts if side == "after"]
        new_nodes.append(helper.make_node("Concat", order, [node.output[0]], name=f"{base}__concat", axis=1))
        changed += 1
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        model.graph.initializer.extend(extra)
        used = {i for n in model.graph.node for i in n.input}     # the Pads' own constants are gone
        keep = [t for t in model.graph.initializer if t.name in used or t.name not in dropped]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return changed


class ChannelPadsAsConcat(GraphPass):
    name = "channel_pads_as_concat"
    description = ("zero-channel Pad rewritten as Concat with zeros (exact; Hexagon HTP pads with the raw 0, "
                   "not the zero point)")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return channel_pads_as_concat(model)


#: Exact rewrites for the HTP target, applied before quantizing for qnn.
HTP_REWRITES: tuple[GraphPass, ...] = (ChannelPadsAsConcat(), ErfGeluAsGelu())
