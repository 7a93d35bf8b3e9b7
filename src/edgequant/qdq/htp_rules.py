"""What Hexagon HTP's op validation needs beyond ORT's QNN recipe, found on the HTP backend.

Each rule names the quantization choice HTP rejects (the node then runs on the CPU EP, with a
round trip for its tensors) and what it accepts instead. Measured with onnxruntime-qnn 2.7.0's
HTP backend (tests/test_qnn_htp.py keeps each rule honest):
- LayerNormalization: a symmetric int8 scale (what our symmetric-int8-weights rule writes) is
  rejected, in 8- and 16-bit activations alike; a uint8 scale runs on HTP.
"""

from __future__ import annotations

import onnx


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
