"""qdq.depthwise_channels: depthwise convs widened to 16-channel multiples with zero channels, the
FP32 function unchanged, a channel Pad between two widened regions gone, untouchable regions left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant.qdq.depthwise_channels import (
    PadDepthwiseChannels,
    pad_depthwise_channels,
)

RNG = np.random.default_rng(11)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _blaze_net(*, dw_output_is_graph_output: bool = False, act2: str = "Relu") -> onnx.ModelProto:
    """x[1,4,16,16] -> 1x1 (4->24) -> Relu -> t1; block: dw3x3(24) -> 1x1(24->24) + t1 -> Relu -> t2;
    widening block: dw3x3(24) -> 1x1(24->28) + Pad(t2, 4 channels) -> Relu -> t3; dw3x3(28) -> 1x1(28->8) -> y."""
    inits, nodes = [], []

    def conv(name: str, x: str, w: np.ndarray, group: int = 1) -> str:
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array((RNG.standard_normal(w.shape[0]) * 0.1).astype(np.float32), f"{name}.b")])
        k = w.shape[2]
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, group=group,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        return name

    t1 = conv("stem", "x", _w(24, 4, 1, 1))
    nodes.append(helper.make_node("Relu", [t1], ["t1"], name="relu1"))
    d1 = conv("dw1", "t1", _w(24, 1, 3, 3), group=24)
    p1 = conv("pw1", d1, _w(24, 24, 1, 1))
    nodes += [helper.make_node("Add", [p1, "t1"], ["s1"], name="add1"), helper.make_node(act2, ["s1"], ["t2"], name="act2")]
    d2 = conv("dw2", "t2", _w(24, 1, 3, 3), group=24)
    p2 = conv("pw2", d2, _w(28, 24, 1, 1))
    inits.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64), "widen"))
    nodes += [helper.make_node("Pad", ["t2", "widen"], ["t2w"], name="pad", mode="constant"),
              helper.make_node("Add", [p2, "t2w"], ["s2"], name="add2"), helper.make_node("Relu", ["s2"], ["t3"], name="relu3")]
    d3 = conv("dw3", "t3", _w(28, 1, 3, 3), group=28)
    conv("head", d3, _w(8, 28, 1, 1))
    outputs = [helper.make_tensor_value_info("head", TensorProto.FLOAT, [1, 8, 16, 16])]
    if dw_output_is_graph_output:
        outputs.append(helper.make_tensor_value_info("dw3", TensorProto.FLOAT, [1, 28, 16, 16]))
    graph = helper.make_graph(nodes, "blaze", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    src = model if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(src if isinstance(src, bytes) else str(src),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _groups(model: onnx.ModelProto) -> dict[str, int]:
    return {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node
            if n.op_type == "Conv" and n.name.startswith("dw")}


def test_depthwise_convs_widen_to_16_and_the_float_function_is_unchanged() -> None:
    model = _blaze_net()
    x = RNG.standard_normal((1, 4, 16, 16)).astype(np.float32)
    before = _run(model, x)
    assert pad_depthwise_channels(model) == 3
    onnx.checker.check_model(model)
    assert _groups(model) == {"dw1": 32, "dw2": 32, "dw3": 32}
    # both sides of the widening Pad are 32 wide now: the Pad has nothing left to do
    assert not any(n.op_type == "Pad" for n in model.graph.node)
    assert "widen" not in {t.name for t in model.graph.initializer}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert weights["stem.w"].shape[0] == 32 and not weights["stem.w"][24:].any() and not weights["stem.b"][24:].any()
    assert weights["head.w"].shape == (8, 32, 1, 1) and not weights["head.w"][:, 28:].any()
    after = _run(model, x)
    assert after[0].shape == before[0].shape
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_an_exporter_shape_entry_for_a_widened_weight_does_not_contradict_shape_inference() -> None:
    # Paddle's exporter (PP-OCR) also lists weights in value_info; the old shape must go with the weight
    model = _blaze_net()
    model.graph.value_info.append(helper.make_tensor_value_info("head.w", TensorProto.FLOAT, [8, 28, 1, 1]))
    assert pad_depthwise_channels(model) == 3
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_a_region_that_reaches_a_graph_output_stays_and_so_does_what_pads_into_it() -> None:
    model = _blaze_net(dw_output_is_graph_output=True)
    x = RNG.standard_normal((1, 4, 16, 16)).astype(np.float32)
    before = _run(model, x)
    # dw3's 28 channels are a graph output; widening the 24-channel region to 32 would then need the
    # Pad into dw3's region to drop channels, so nothing changes
    assert pad_depthwise_channels(model) == 0
    assert _groups(model) == {"dw1": 24, "dw2": 24, "dw3": 28}
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 1
    for a, b in zip(_run(model, x), before):
        assert np.array_equal(a, b)


def test_channels_that_would_not_stay_zero_are_not_padded_into_a_real_channel() -> None:
    # Sigmoid(0) = 0.5: t2's new channels would become real channels of the Pad's output
    model = _blaze_net(act2="Sigmoid")
    x = RNG.standard_normal((1, 4, 16, 16)).astype(np.float32)
    before = _run(model, x)
    assert pad_depthwise_channels(model) == 1
    assert _groups(model) == {"dw1": 24, "dw2": 24, "dw3": 32}
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    amounts = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == pad.input[1]))
    assert amounts[5] == 8                       # 24 -> 32: its own 4 channels and dw3's 4 new ones
    np.testing.assert_allclose(_run(model, x)[0], before[0], rtol=1e-5, atol=1e-5)


def test_static_int8_reads_widened_depthwise_weights_and_matches_the_unwidened_recipe(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "blaze.onnx"
    onnx.save(_blaze_net(), str(src))
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 4, 16, 16)).astype(np.float32))
    widened, plain = tmp_path / "widened.onnx", tmp_path / "plain.onnx"
    api.quantize(src, widened, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    depthwise = [numpy_helper.to_array(t) for t in onnx.load(str(widened)).graph.initializer
                 if t.data_type == TensorProto.INT8 and len(t.dims) == 4 and t.dims[1] == 1]
    assert sorted(w.shape[0] for w in depthwise) == [32, 32, 32]
    monkeypatch.setattr(PadDepthwiseChannels, "run", lambda self, model, context: 0)
    api.quantize(src, plain, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    x = RNG.standard_normal((1, 4, 16, 16)).astype(np.float32)
    # the new channels hold zeros: calibration ranges, weight scales and so every code are the same
    assert np.array_equal(_run(widened, x)[0], _run(plain, x)[0])
