"""qdq.quantized_pad: a Pad between a DQ and a Q of one grid runs on the 8-bit codes, with outputs
bit-identical to the float path, and only where that is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant.qdq.graph import GraphIndex, float_source
from edgequant.qdq.quantized_pad import PadOnQuantized, pad_on_quantized

RNG = np.random.default_rng(5)


def _residual_net(path: Path) -> Path:
    """BlazeFace's widening residual: x[1,4,8,8] -> Conv(4->6) -> Relu -> channel Pad to 8 -> Add(Conv(4->8)(x))."""
    w1 = (RNG.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Pad", ["r1", "pads"], ["widened"], name="channel_pad", mode="constant"),
             helper.make_node("Conv", ["x", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Add", ["widened", "c2"], ["y"], name="add")]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.full(6, 0.1, np.float32), "B1"),
             numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros(8, np.float32), "B2"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 2, 0, 0], np.int64), "pads")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_the_quantized_pad_reads_codes_and_matches_the_float_path_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    src = _residual_net(tmp_path / "residual.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 4, 8, 8)).astype(np.float32))
    out = tmp_path / "residual.int8.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    model = onnx.load(str(out))
    idx = GraphIndex.build(model.graph)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    producer = idx.producer[pad.input[0]]
    assert producer.op_type == "QuantizeLinear"              # the codes, not a DequantizeLinear's floats
    assert idx.const(pad.input[2]).dtype == np.uint8
    assert [c.op_type for c in idx.consumers[pad.output[0]]] == ["DequantizeLinear"]
    # the float name of what the Add reads is still the FP32 graph's Pad output (AdaRound, bias correction)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert "widened" in {float_source(idx, t) for t in add.input}

    # the same recipe with the pass off: the float Pad between a DQ and a Q, and the same outputs
    monkeypatch.setattr(PadOnQuantized, "run", lambda self, model, context: 0)
    plain = tmp_path / "plain.int8.onnx"
    api.quantize(src, plain, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    plain_idx = GraphIndex.build(onnx.load(str(plain)).graph)
    plain_pad = next(n for n in onnx.load(str(plain)).graph.node if n.op_type == "Pad")
    assert plain_idx.producer[plain_pad.input[0]].op_type == "DequantizeLinear"
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert np.array_equal(_run(out, {"x": x}), _run(plain, {"x": x}))


def _qdq_pad(scale_in: float, scale_out: float, *, mode: str = "constant", value: float | None = None) -> onnx.ModelProto:
    """x -> Q -> DQ -> Pad(W by 1 each side) -> Q -> DQ -> y, uint8 zero point 10."""
    inits = [numpy_helper.from_array(np.array(scale_in, np.float32), "s_in"),
             numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
             numpy_helper.from_array(np.array(10, np.uint8), "z"),
             numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64), "pads")]
    pad_inputs = ["xd", "pads"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z"], ["xd"]),
             helper.make_node("Pad", pad_inputs, ["p"], name="pad", mode=mode),
             helper.make_node("QuantizeLinear", ["p", "s_out", "z"], ["p_QuantizeLinear_Output"]),
             helper.make_node("DequantizeLinear", ["p_QuantizeLinear_Output", "s_out", "z"], ["y"])]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("mode,value", [("constant", None), ("constant", 0.5), ("reflect", None), ("edge", None)])
def test_exact_pads_move_onto_the_codes(tmp_path: Path, mode: str, value: float | None) -> None:
    model = _qdq_pad(0.25, 0.25, mode=mode, value=value)
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before))
    assert pad_on_quantized(model) == 1
    onnx.save(model, str(after))
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    x = RNG.uniform(-2.0, 2.0, (1, 2, 3, 4)).astype(np.float32)
    assert np.array_equal(_run(before, {"x": x}), _run(after, {"x": x}))


@pytest.mark.parametrize("scale_out,value", [(0.5, None), (0.25, 0.3)])
def test_a_pad_that_would_requantize_stays_on_the_float_path(scale_out: float, value: float | None) -> None:
    model = _qdq_pad(0.25, scale_out, value=value)      # another grid after it; a value between two codes
    assert pad_on_quantized(model) == 0
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2
