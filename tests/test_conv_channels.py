"""qdq.conv_channels: a quantized stem Conv (3 input channels) reads its uint8 input padded to 4
channels with a zero-extended weight, bit-identical to the unpadded model, on x86-vnni only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant.qdq.conv_channels import pad_conv_input_channels
from edgequant.targets import detect_cpu

RNG = np.random.default_rng(3)


def _stem_net(path: Path) -> Path:
    """x[1,3,32,32] -> Conv 7x7/2 (3 -> 8) -> Relu -> Conv 3x3 (8 -> 8) -> y."""
    w1 = (RNG.standard_normal((8, 3, 7, 7)) * 0.2).astype(np.float32)
    w2 = (RNG.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="stem", kernel_shape=[7, 7], strides=[2, 2],
                              pads=[3, 3, 3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.full(8, 0.1, np.float32), "B1"),
             numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros(8, np.float32), "B2")]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path: Path, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def quantized(tmp_path: Path) -> tuple[Path, Path]:
    src = _stem_net(tmp_path / "stem.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "stem.int8.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    return src, out


def test_the_stem_reads_a_4_channel_uint8_input_and_gives_the_same_codes(quantized, tmp_path: Path) -> None:
    _, out = quantized
    model = onnx.load(str(out))
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1, [n.op_type for n in model.graph.node]        # the stem only: conv2 has 8 channels
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    stem_w = next(w for w in weights.values() if w.ndim == 4 and w.shape[2:] == (7, 7))
    assert stem_w.shape[1] == 4 and not stem_w[:, 3].any()             # zero-extended int8 weight
    # onnxruntime fuses it into an integer convolution reading the padded uint8 tensor
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    opt = tmp_path / "opt.onnx"
    padded_out = _run(out, x, opt)
    fused = onnx.load(str(opt)).graph.node
    assert sum(n.op_type == "QLinearConv" for n in fused) == 2 and not any(n.op_type == "Conv" for n in fused)
    # bit-identical to the same quantized model without the rewrite
    unpadded = tmp_path / "unpadded.onnx"
    model = onnx.load(str(out))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    for n in model.graph.node:
        n.input[:] = [pad.input[0] if i == pad.output[0] else i for i in n.input]
    model.graph.node.remove(pad)
    for t in model.graph.initializer:
        if t.name in weights and weights[t.name] is stem_w:
            t.CopyFrom(numpy_helper.from_array(stem_w[:, :3].copy(), t.name))
    onnx.save(model, str(unpadded))
    if not detect_cpu().has_vnni:   # AVX2 sums u8*s8 pairs in int16 (saturating): the zero channel re-pairs them
        pytest.skip("bit-identity holds on the rewrite's target, a VNNI CPU; this one has AVX2 only")
    assert np.array_equal(_run(unpadded, x), padded_out)


def test_other_targets_and_wide_inputs_are_left_alone(tmp_path: Path) -> None:
    src = _stem_net(tmp_path / "stem.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "avx2.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-avx2")
    assert not any(n.op_type == "Pad" for n in onnx.load(str(out)).graph.node)   # not measured there
    float_model = onnx.load(str(src))
    assert pad_conv_input_channels(float_model) == 0                   # FP32 Convs (no DQ) untouched


def test_16_bit_activations_are_left_alone(tmp_path: Path) -> None:
    """onnxruntime's CPU Pad has no 16-bit kernel: padding a uint16 stem input made a model it
    refuses to load (found on the zoo's pose_landmark with --activation-type uint16)."""
    src = _stem_net(tmp_path / "stem.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "a16.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni",
                 activation_type="uint16")
    assert not any(n.op_type == "Pad" for n in onnx.load(str(out)).graph.node)
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert _run(out, x).shape == (1, 8, 16, 16)
