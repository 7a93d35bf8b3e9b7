"""Error classes the model zoo (benchmarks/zoo) exposed, each reproduced on an onnx.helper model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant import model as model_io
from edgequant.data import open_source
from edgequant.qdq import prepare as prepare_mod


def _f32(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def shared_bias_net() -> onnx.ModelProto:
    """Two Convs sharing one bias initializer 'b'; the first Conv's weight is 'b1' and its output
    'b2': ORT's QDQ quantizer names its copy of the shared bias 'b' + (largest numeric suffix
    among initializers + 1) = 'b2' (tflite2onnx numbers tensors this way; MediaPipe's palm
    detector has exactly this)."""
    rng = np.random.default_rng(0)
    inits = [_f32("b1", rng.normal(0, 0.3, (4, 3, 3, 3))), _f32("w1", rng.normal(0, 0.3, (4, 4, 3, 3))),
             _f32("b", rng.normal(0, 0.1, (4,)))]
    nodes = [helper.make_node("Conv", ["x", "b1", "b"], ["b2"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b2", "w1", "b"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "shared_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_shared_bias_whose_copy_name_is_an_activation_still_quantizes(tmp_path: Path) -> None:
    """Without unsharing, quantize_static writes DQ(bias copy 'b2') into conv1's data input and
    the quantized model cannot be loaded ('Input tensor must have at least 3 dimensions')."""
    src = tmp_path / "m.onnx"
    onnx.save(shared_bias_net(), str(src))
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).normal(size=(8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npy"))
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert got.shape == want.shape and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


def test_unshare_biases_gives_each_conv_its_own_bias_with_a_free_name(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(shared_bias_net(), str(src))
    passes: list[str] = []
    dst = prepare_mod._unshared_biases(src, tmp_path / "u.onnx", passes)
    model = onnx.load(str(dst))
    biases = [n.input[2] for n in model.graph.node if n.op_type == "Conv"]
    assert len(set(biases)) == 2 and "b2" not in {t.name for t in model.graph.initializer}
    assert passes == ["unshare_biases(1 shared bias initializer use(s) given their own copy)"]
    assert prepare_mod._unshared_biases(dst, tmp_path / "again.onnx", passes) == dst  # nothing shared: untouched


def test_question_mark_dims_are_anonymous_not_one_symbol(tmp_path: Path) -> None:
    """Paddle2ONNX writes '?' for every unknown dim ([-1, 3, '?', '?'] in PP-OCR's classifier):
    height 48 and width 192 of one image are not one symbol that must agree."""
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "paddle_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 48, 192), np.float32))
    src = open_source(tmp_path / "x.npy", model_io.graph_inputs(model))
    assert [s.feeds["x"].shape for s in src] == [(1, 3, 48, 192)] * 2
