"""The pass interface: results say what changed, passes run in order, exact rewrites stay exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgequant.graph_pass import GraphPass, PassContext, run_passes
from edgequant.rewrites import EXACT_REWRITES, DecomposePRelu


def _prelu_model() -> onnx.ModelProto:
    alpha = numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1), "alpha")
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "alpha"], ["y"], name="p")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [alpha])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_prelu_pass_reports_and_stays_exact() -> None:
    model = _prelu_model()
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    before = _run(model, x)
    (result,) = run_passes(model, [DecomposePRelu()])
    assert result.changed == 1 and result.exact and result.label == "decompose_prelu(1)"
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6, atol=1e-6)
    (again,) = run_passes(model, EXACT_REWRITES)
    assert again.changed == 0      # nothing left to rewrite


class _Rename(GraphPass):
    name = "rename"
    unit = "nodes"

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        for n in model.graph.node:
            n.name += self.suffix + context.target
        return len(model.graph.node)


def test_passes_run_in_order_with_the_context() -> None:
    model = _prelu_model()
    results = run_passes(model, [_Rename("_a"), _Rename("_b")], PassContext(target="qnn"))
    assert [r.label for r in results] == ["rename(1 nodes)", "rename(1 nodes)"]
    assert model.graph.node[0].name == "p_aqnn_bqnn"
