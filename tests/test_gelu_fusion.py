"""The erf-form GELU rewrite for HTP: the same function as one com.microsoft Gelu, both exporter
orders matched, anything else left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.qdq.gelu_fusion import fuse_erf_gelu


def _gelu_model(order: str, *, one: float = 1.0, scale_op: str = "Div") -> onnx.ModelProto:
    c = np.sqrt(2.0) if scale_op == "Div" else 1 / np.sqrt(2.0)
    inits = [numpy_helper.from_array(np.array(c, np.float32), "c"),
             numpy_helper.from_array(np.array(one, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Neg", ["x"], ["h"]),
             helper.make_node(scale_op, ["h", "c"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["one", "e"], ["a"])]
    if order == "x*(1+erf)*0.5":
        nodes += [helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    else:                                          # (x * 0.5) * (1 + erf)
        nodes += [helper.make_node("Mul", ["h", "half"], ["p"]), helper.make_node("Mul", ["p", "a"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("order", ["x*(1+erf)*0.5", "x*0.5*(1+erf)"])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_erf_gelu_becomes_one_gelu_with_the_same_outputs(order: str, scale_op: str) -> None:
    model = _gelu_model(order, scale_op=scale_op)
    x = np.random.default_rng(0).normal(0, 2, (4, 8)).astype(np.float32)
    before = _run(model, x)
    assert fuse_erf_gelu(model) == 1
    assert [(n.op_type, n.domain) for n in model.graph.node] == [("Neg", ""), ("Gelu", "com.microsoft")]
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-6)


def test_other_erf_graphs_are_left_alone() -> None:
    model = _gelu_model("x*(1+erf)*0.5", one=2.0)          # 2 + erf: not a GELU
    assert fuse_erf_gelu(model) == 0 and "Erf" in [n.op_type for n in model.graph.node]
    shared = _gelu_model("x*(1+erf)*0.5")                   # an intermediate read elsewhere too
    shared.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 8]))
    assert fuse_erf_gelu(shared) == 0
