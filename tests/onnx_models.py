"""Small real ONNX models built with onnx.helper for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def conv_net(opset: int = 12, channels: int = 64, size: int = 16, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Weight-heavy conv classifier: 3x(Conv+Relu) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(3):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (channels, cin, 3, 3))
        b = rng.normal(0, 0.01, (channels,))
        inits += [_init(f"conv{i}.w", w), _init(f"conv{i}.b", b)]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        prev, cin = f"relu{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    inits += [_init("fc.w", rng.normal(0, 0.1, (classes, channels))), _init("fc.b", np.zeros(classes))]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgequant-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def matmul_net(hidden: int = 256, features: int = 64, classes: int = 8, seed: int = 1) -> onnx.ModelProto:
    """Two-layer MLP: MatMul+Add+Relu -> MatMul+Add."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.1, (features, hidden))), _init("b1", np.zeros(hidden)),
             _init("w2", rng.normal(0, 0.1, (hidden, classes))), _init("b2", np.zeros(classes))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w2"], ["y0"], name="mm2"),
        helper.make_node("Add", ["y0", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(nodes, "matmul_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgequant-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path
