"""edgequant.qdq.passes: exact rewrites (outputs bit-identical before and after)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgequant.measure.coverage import coverage_of_graph
from edgequant.qdq.passes import drop_zero_bias_zero_points, fold_identity_qdq, upgrade_opset


def _model(nodes, inits, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.linspace(-3, 3, 16, dtype=np.float32)


def test_fold_identity_qdq_removes_requantize_noop() -> None:
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"])]
    m = _model(nodes, inits)
    before = _run(m, X)
    assert fold_identity_qdq(m) == 1
    assert [n.op_type for n in m.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    np.testing.assert_array_equal(_run(m, X), before)


def test_drop_zero_bias_zero_points_keeps_values() -> None:
    inits = [numpy_helper.from_array(np.arange(16, dtype=np.int32) - 8, "b"),
             numpy_helper.from_array(np.full(16, 0.01, np.float32), "bs"),
             numpy_helper.from_array(np.zeros(16, np.int32), "bz")]
    nodes = [helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bias"], axis=0),
             helper.make_node("Add", ["x", "bias"], ["y"])]
    m = _model(nodes, inits)
    before = _run(m, X)
    assert drop_zero_bias_zero_points(m) == 1
    assert "bz" not in {t.name for t in m.graph.initializer}
    np.testing.assert_array_equal(_run(m, X), before)


def test_upgrade_opset_to_13() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [], opset=11)
    up, before = upgrade_opset(m)
    assert before == 11 and up.opset_import[0].version == 13


def test_coverage_counts_float_and_int8_ops() -> None:
    nodes = [helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="mi"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    cov = coverage_of_graph(_model(nodes, []))
    assert (cov.quantized_compute_ops, cov.compute_ops, cov.float_compute_nodes) == (1, 2, ["mm"])
