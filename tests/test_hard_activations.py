"""edgequant.qdq.hard_activations: a MobileNetV3 block (Hard-Swish, squeeze-excite with Hard-Sigmoid,
ReduceMean pooling as torch's dynamo exporter writes it) runs all-integer after ORT optimization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantType

from edgequant.qdq import quantize_static_optimized
from edgequant.qdq.hard_activations import fold_conv_hardsigmoid, hardsigmoid_as_add, reduce_mean_as_global_pool

C, E, H = 8, 24, 14


def mnv3_block(seed: int = 0) -> onnx.ModelProto:
    """stem conv -> HardSwish -> expand 1x1 -> HardSwish -> depthwise -> HardSwish -> SE(ReduceMean, fc1,
    Relu, fc2, HardSigmoid, Mul) -> project 1x1, opset 20 (ReduceMean axes as an input)."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w0", C, 3, 3, 3), w("b0", C, scale=0.1), w("we", E, C, 1, 1), w("be", E, scale=0.1),
             w("wd", E, 1, 3, 3), w("bd", E, scale=0.1), w("w1", 8, E, 1, 1), w("b1", 8, scale=0.1),
             w("w2", E, 8, 1, 1), w("b2", E, scale=0.1), w("wp", C, E, 1, 1), w("bp", C, scale=0.1),
             numpy_helper.from_array(np.array([-1, -2], np.int64), "axes")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c0"], ["h0"]),
        helper.make_node("Conv", ["h0", "we", "be"], ["ce"], name="expand"),
        helper.make_node("HardSwish", ["ce"], ["he"]),
        helper.make_node("Conv", ["he", "wd", "bd"], ["cd"], name="depthwise", group=E, kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["cd"], ["hd"]),
        helper.make_node("ReduceMean", ["hd", "axes"], ["m"], name="se_pool", keepdims=1),
        helper.make_node("Conv", ["m", "w1", "b1"], ["s1"], name="se_fc1"),
        helper.make_node("Relu", ["s1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["s2"], name="se_fc2"),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["gate", "hd"], ["scaled"], name="se_scale"),
        helper.make_node("Conv", ["scaled", "wp", "bp"], ["y"], name="project"),
    ]
    graph = helper.make_graph(nodes, "mnv3_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, n: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._it = iter([{"x": rng.standard_normal((1, 3, H, H)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _x(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, H, H)).astype(np.float32)


def test_block_runs_all_integer_after_ort_optimization(tmp_path: Path) -> None:
    src, out = tmp_path / "block.onnx", tmp_path / "block.int8.onnx"
    onnx.save(mnv3_block(), str(src))
    summary = quantize_static_optimized(src, out, Reader(), activation_type=QuantType.QUInt8, target="x86-vnni")
    ops = summary.optimized_ops
    # no float HardSigmoid / ReduceMean between a DQ and a Q: the SE gate is the fc2 QLinearConv's output
    # saturation, the pooling QLinearGlobalAveragePool, each HardSwish QLinearAdd + QLinearMul
    assert ops.get("HardSigmoid", 0) == 0 and ops.get("ReduceMean", 0) == 0 and ops.get("Add", 0) == 0
    assert ops.get("QLinearGlobalAveragePool") == 1
    assert ops.get("QLinearAdd") == 3 and ops.get("QLinearMul") == 4
    assert ops.get("QuantizeLinear") == 1 and ops.get("DequantizeLinear") == 1   # the model's input and output
    assert summary.quantized_compute_ops == summary.compute_ops == 6
    ref, got = _run(src, _x()), _run(out, _x())
    cos = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.99


def test_fp32_rewrites_keep_the_function() -> None:
    model = mnv3_block()
    ref = _run(model, _x())
    assert reduce_mean_as_global_pool(model) == 1
    assert fold_conv_hardsigmoid(model) == 1        # only the SE gate: each HardSwish reads its Conv twice
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceMean" not in ops and "HardSigmoid" not in ops and "Clip" in ops
    np.testing.assert_allclose(_run(model, _x()), ref, rtol=1e-5, atol=1e-5)


def test_hardsigmoid_as_add_gives_the_same_codes(tmp_path: Path) -> None:
    """On a QDQ graph: DQ -> HardSigmoid -> Q (range [0, 1]) == DQ -> Add(3) -> Q(scale * 6)."""
    scale_x, zp_x = np.float32(0.0311), np.uint8(128)   # no exact rounding ties on its grid
    inits = [numpy_helper.from_array(np.array(scale_x), "sx"), numpy_helper.from_array(np.array(zp_x), "zx"),
             numpy_helper.from_array(np.array(np.float32(1 / 255)), "sh"),
             numpy_helper.from_array(np.array(np.uint8(0)), "zh")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("HardSigmoid", ["xd"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("QuantizeLinear", ["h", "sh", "zh"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "sh", "zh"], ["y"])]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.linspace(-4.5, 4.5, 4096, dtype=np.float32).reshape(1, -1)
    ref = _run(model, x)
    assert hardsigmoid_as_add(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("Add") == 1
    got = _run(model, x)
    # the same 8-bit codes (float rounding may move a value sitting on a rounding tie by one step)
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6
    assert np.mean(got != ref) < 0.01


def test_hardsigmoid_as_add_leaves_a_range_below_zero_alone() -> None:
    """A Q whose lowest code is not 0 (zero point inside the range) would not clip at 0: no rewrite."""
    inits = [numpy_helper.from_array(np.array(np.float32(0.01)), "s"), numpy_helper.from_array(np.array(np.uint8(20)), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("HardSigmoid", ["xd"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert hardsigmoid_as_add(model) == 0
