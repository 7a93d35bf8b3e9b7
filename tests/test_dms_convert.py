"""The tflite2onnx PReLU fix, on a tiny hand-built .tflite: PReLU whose alpha is DEQUANTIZE(fp16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tflite = pytest.importorskip("tflite")
flatbuffers = pytest.importorskip("flatbuffers")
pytest.importorskip("tflite2onnx")

import onnxruntime as ort  # noqa: E402

from edgequant.dms import convert  # noqa: E402
from edgequant.errors import EdgequantError  # noqa: E402

ALPHA = np.array([0.25, -0.5, 2.0], dtype=np.float16)


def _vector(b: flatbuffers.Builder, values: list[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype=np.int32))


def _offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def tiny_prelu_tflite() -> bytes:
    """[1,4,4,3] -> 1x1 identity CONV -> PRELU(alpha = DEQUANTIZE(fp16 [1,1,3])), as in face_landmark."""
    b = flatbuffers.Builder(1024)
    raw = b.CreateNumpyVector(np.frombuffer(ALPHA.tobytes(), dtype=np.uint8))
    eye = np.eye(3, dtype=np.float32).reshape(3, 1, 1, 3)  # 1x1 identity conv, OHWI
    weights = b.CreateNumpyVector(np.frombuffer(eye.tobytes(), dtype=np.uint8))
    bias = b.CreateNumpyVector(np.zeros(12, dtype=np.uint8))
    buffers = []
    for data in (None, raw, weights, bias):
        tflite.BufferStart(b)
        if data is not None:
            tflite.BufferAddData(b, data)
        buffers.append(tflite.BufferEnd(b))
    tensors = []
    for name, shape, ttype, buf in (("input", [1, 4, 4, 3], tflite.TensorType.FLOAT32, 0),
                                    ("alpha_fp16", [1, 1, 3], tflite.TensorType.FLOAT16, 1),
                                    ("alpha", [1, 1, 3], tflite.TensorType.FLOAT32, 0),
                                    ("output", [1, 4, 4, 3], tflite.TensorType.FLOAT32, 0),
                                    ("weights", [3, 1, 1, 3], tflite.TensorType.FLOAT32, 2),
                                    ("bias", [3], tflite.TensorType.FLOAT32, 3),
                                    ("conv", [1, 4, 4, 3], tflite.TensorType.FLOAT32, 0)):
        n, s = b.CreateString(name), _vector(b, shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, s)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, n)
        tensors.append(tflite.TensorEnd(b))
    # The conv gives tflite2onnx a layout to propagate (NHWC -> NCHW), which is what breaks.
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
    tflite.Conv2DOptionsAddStrideW(b, 1)
    tflite.Conv2DOptionsAddStrideH(b, 1)
    tflite.Conv2DOptionsAddDilationWFactor(b, 1)
    tflite.Conv2DOptionsAddDilationHFactor(b, 1)
    conv_opts = tflite.Conv2DOptionsEnd(b)
    ops = []
    for code_index, ins, outs, opts in ((2, [0, 4, 5], [6], conv_opts), (0, [1], [2], None),
                                        (1, [6, 2], [3], None)):
        i, o = _vector(b, ins), _vector(b, outs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, code_index)
        tflite.OperatorAddInputs(b, i)
        tflite.OperatorAddOutputs(b, o)
        if opts is not None:
            tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.Conv2DOptions)
            tflite.OperatorAddBuiltinOptions(b, opts)
        ops.append(tflite.OperatorEnd(b))
    t_vec, o_vec = _offsets(b, tensors), _offsets(b, ops)
    in_vec, out_vec, name = _vector(b, [0]), _vector(b, [3]), b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddOperators(b, o_vec)
    tflite.SubGraphAddName(b, name)
    graph = tflite.SubGraphEnd(b)
    codes = []
    for code in (tflite.BuiltinOperator.DEQUANTIZE, tflite.BuiltinOperator.PRELU,
                 tflite.BuiltinOperator.CONV_2D):
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        codes.append(tflite.OperatorCodeEnd(b))
    c_vec, g_vec, b_vec = _offsets(b, codes), _offsets(b, [graph]), _offsets(b, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, c_vec)
    tflite.ModelAddSubgraphs(b, g_vec)
    tflite.ModelAddBuffers(b, b_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_prelu.tflite"
    path.write_bytes(tiny_prelu_tflite())
    return path


def test_stock_tflite2onnx_fails_on_dequantized_prelu_alpha(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgequantError, match="tiny_prelu.tflite: tflite2onnx failed: IndexError"):
        convert.tflite_to_onnx(tiny, tmp_path / "x.onnx", fix_prelu=False)
    assert not (tmp_path / "x.onnx").exists()


def test_fixed_conversion_matches_prelu_math(tiny: Path, tmp_path: Path) -> None:
    model = convert.tflite_to_onnx(tiny, tmp_path / "tiny.onnx")
    assert model.opset_import[0].version >= 13
    sess = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, 4, 4]  # NHWC became NCHW
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    alpha = ALPHA.astype(np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, np.where(x >= 0, x, alpha * x), rtol=1e-6)


def test_verify_compares_with_litert(tiny: Path, tmp_path: Path) -> None:
    from edgequant.dms import verify

    if verify.litert_version() is None:
        pytest.skip("ai-edge-litert is not installed")
    convert.tflite_to_onnx(tiny, tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).normal(size=(3, 3, 4, 4)).astype(np.float32)
    result = verify.compare(tiny, tmp_path / "tiny.onnx", x)
    assert result.status == "ok" and result.samples == 3
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5


def test_verify_skips_without_litert(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    from edgequant.dms import verify

    monkeypatch.setattr(verify, "litert_version", lambda: None)
    result = verify.compare(tiny, tmp_path / "missing.onnx", np.zeros((1, 3, 4, 4), np.float32))
    assert result.status == "skipped" and "ai-edge-litert" in result.reason


def test_a_paddings_constant_shared_by_several_pads_converts(tmp_path: Path, monkeypatch) -> None:
    """MediaPipe's pose_landmark_full.tflite feeds one paddings constant to several PADs: stock
    tflite2onnx rewrites it in place for the first and fails on the second (IndexError)."""
    import contextlib

    from edgequant.dms.wheel import extract_member, find_wheel

    wheel = find_wheel(Path(__file__).resolve().parents[1] / ".cache" / "dms" / "wheel")
    if wheel is None:
        pytest.skip("the mediapipe wheel is not cached (python -m edgequant.dms.build fetches it)")
    tfl = tmp_path / "pose.tflite"
    extract_member(wheel, "mediapipe/modules/pose_landmark/pose_landmark_full.tflite", tfl)
    with monkeypatch.context() as m:
        m.setattr(convert, "shared_pads_fix", contextlib.nullcontext)
        with pytest.raises(EdgequantError, match="IndexError"):
            convert.tflite_to_onnx(tfl, tmp_path / "stock.onnx")
    model = convert.tflite_to_onnx(tfl, tmp_path / "pose.onnx")
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 5
    from edgequant.dms import verify

    if verify.litert_version() is not None:     # the converted model computes what the .tflite does
        x = np.random.default_rng(2).uniform(0, 1, size=(2, 3, 256, 256)).astype(np.float32)
        assert verify.compare(tfl, tmp_path / "pose.onnx", x).status == "ok"
