"""edgequant.qdq: every Conv of a residual block runs as QLinearConv after ORT optimization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantType

from edgequant.qdq import int8_coverage, quantize_static_optimized
from edgequant.qdq.passes import activations_s8_to_u8

C, H = 16, 12


def residual_net(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """stem conv+relu -> [conv+relu -> conv] + skip -> relu -> conv -> gap -> gemm.

    The stem output feeds both the block's first conv and the residual Add: the fan-out that
    keeps ORT's default int8-activation flow from fusing those convs on x86.
    """
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w0", C, 3, 3, 3), w("b0", C, scale=0.05), w("w1", C, C, 3, 3, scale=0.1), w("b1", C, scale=0.05),
             w("w2", C, C, 3, 3, scale=0.1), w("b2", C, scale=0.05), w("w3", C, C, 1, 1), w("b3", C, scale=0.05),
             w("fc", 10, C), w("fcb", 10, scale=0.05)]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", **conv),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="block_conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="block_conv2", **conv),
        helper.make_node("Add", ["c2", "r0"], ["a"], name="residual_add"),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="head_conv", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, n: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._it = iter([{"x": rng.standard_normal((1, 3, H, H)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def fp32(tmp_path: Path) -> Path:
    path = tmp_path / "residual.onnx"
    onnx.save(residual_net(), str(path))
    return path


@pytest.mark.parametrize("activation_type", [QuantType.QUInt8, QuantType.QInt8])
def test_every_conv_becomes_qlinearconv(fp32: Path, tmp_path: Path, activation_type: QuantType) -> None:
    out = tmp_path / "int8.onnx"
    summary = quantize_static_optimized(fp32, out, Reader(), reduce_range=True, activation_type=activation_type)

    quantized, total, float_nodes = int8_coverage(out)
    assert (quantized, total, float_nodes) == (5, 5, [])  # 4 Conv + 1 Gemm
    assert summary.fully_quantized and summary.float_compute_nodes == {}
    assert summary.optimized_ops.get("QLinearConv") == 4
    assert summary.optimized_ops.get("QLinearAdd") == 1
    assert "Conv" not in summary.optimized_ops
    if activation_type == QuantType.QInt8 and any("activations_s8_to_u8" in p for p in summary.passes):
        assert summary.config["activation_type"] == "QInt8"

    x = np.random.default_rng(42).standard_normal((1, 3, H, H)).astype(np.float32)
    assert _cosine(_run(fp32, x), _run(out, x)) >= 0.99


def test_float_model_has_zero_coverage(fp32: Path) -> None:
    quantized, total, float_nodes = int8_coverage(fp32)
    assert quantized == 0 and total == 5
    assert {"stem", "block_conv1", "block_conv2", "head_conv", "fc"} == set(float_nodes)


def test_summary_reports_float_and_ignored_exclusions(fp32: Path, tmp_path: Path) -> None:
    """op_types without Gemm leaves fc float (named, with a reason); an excluded Conv between
    Q/DQ is re-quantized by ORT itself, and the summary says so instead of pretending."""
    out = tmp_path / "partial.onnx"
    summary = quantize_static_optimized(fp32, out, Reader(), reduce_range=True, nodes_to_exclude=["head_conv"],
                                        op_types=["Conv", "Add", "Relu", "GlobalAveragePool", "Flatten"])
    assert summary.compute_ops == 5 and summary.quantized_compute_ops == 4
    assert list(summary.float_compute_nodes) == ["fc"]
    assert "not quantized" in summary.float_compute_nodes["fc"]
    assert any("stay float" in w for w in summary.warnings)
    assert any("not honoured" in w and "head_conv" in w for w in summary.warnings)


def test_s8_to_u8_rewrite_is_exact() -> None:
    """int8 Q/DQ of an activation rewritten to uint8 gives bit-identical outputs."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zp = numpy_helper.from_array(np.array(-3, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d1"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d2"]),
             helper.make_node("Add", ["d1", "d2"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], [scale, zp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.linspace(-8, 8, 64, dtype=np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert activations_s8_to_u8(model) == 1
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(run(model), before)
