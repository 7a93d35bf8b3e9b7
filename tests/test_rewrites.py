import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgequant.pipeline import fp32_rewrite_candidate
from edgequant.rewrites import apply_exact_rewrites


def _prelu_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0, 0.5, (8, 1, 1)).astype(np.float32), "alpha")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "alpha"], ["y"], name="prelu")]
    graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_prelu_rewrite_is_exact():
    model = _prelu_net()
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ref = _run(model, x)
    notes = apply_exact_rewrites(model)
    assert len(notes) == 1 and "1 PRelu" in notes[0]
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), ref)
    assert apply_exact_rewrites(model) == []  # nothing left to rewrite


def test_fp32_opt_candidate_only_when_something_changed(tmp_path):
    import onnx_models

    path = tmp_path / "p.onnx"
    onnx.save_model(_prelu_net(), str(path))
    [cand] = fp32_rewrite_candidate(path, onnx.load(str(path)), tmp_path)
    assert cand.name == "fp32-opt" and cand.path.is_file() and cand.config["mode"] == "fp32-opt"
    plain = onnx_models.save(onnx_models.matmul_net(), tmp_path / "m.onnx")
    assert fp32_rewrite_candidate(plain, onnx.load(str(plain)), tmp_path) == []


def test_channel_pads_as_concat_is_exact() -> None:
    """The HTP rewrite keeps the FP32 function for pads before and after the channels, and leaves
    spatial pads and pads wider than the tensor alone."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgequant.qdq.htp_rules import channel_pads_as_concat

    def model(pads: list[int]) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("Neg", ["x"], ["c"]), helper.make_node("Pad", ["c", "pads"], ["y"], mode="constant")],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(pads, np.int64), "pads")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    x = np.random.default_rng(0).normal(0, 1, (2, 4, 5, 5)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    for pads in ([0, 0, 0, 0, 0, 4, 0, 0], [0, 2, 0, 0, 0, 3, 0, 0]):
        m = model(pads)
        want = run(m)
        assert channel_pads_as_concat(m) == 1
        assert "Pad" not in {n.op_type for n in m.graph.node} and "Concat" in {n.op_type for n in m.graph.node}
        assert "pads" not in {t.name for t in m.graph.initializer}          # no unused constants left
        np.testing.assert_array_equal(run(m), want)
    for untouched in ([0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 5, 0, 0]):     # spatial; wider than 4 channels
        assert channel_pads_as_concat(model(untouched)) == 0
