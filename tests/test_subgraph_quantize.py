"""INT8 for the compute inside If bodies (silero_vad, openWakeWord verifiers, detection
post-processing): dynamic mode enters the bodies, static mode calibrates each branch on the
samples that take it, and coverage counts the integer kernels found there."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant.devices import local_cpu
from edgequant.qdq.subgraphs import all_nodes, fold_body_weights

RNG = np.random.default_rng(11)
X_SHAPE = [1, 3, 8, 8]


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name))


def if_conv_net() -> onnx.ModelProto:
    """``If(flag)``: then = Conv -> Relu; else = Conv (weight a Concat of two Constants, as
    exporters write it) -> MatMul on the last axis. Every weight is a Constant node in its body."""
    wt = RNG.normal(0, 0.3, (8, 3, 3, 3))
    wa, wb = RNG.normal(0, 0.3, (4, 3, 3, 3)), RNG.normal(0, 0.3, (4, 3, 3, 3))
    m = RNG.normal(0, 0.3, (8, 8))
    then = helper.make_graph(
        [_const("wt", wt), helper.make_node("Conv", ["x", "wt"], ["tc"], name="then_conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["tc"], ["then_y"], name="then_relu")],
        "then", [], [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [1, 8, 8, 8])])
    other = helper.make_graph(
        [_const("wa", wa), _const("wb", wb), _const("m", m),
         helper.make_node("Concat", ["wa", "wb"], ["we"], name="else_concat", axis=0),
         helper.make_node("Conv", ["x", "we"], ["ec"], name="else_conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["ec"], ["er"], name="else_relu"),
         helper.make_node("MatMul", ["er", "m"], ["else_y"], name="else_matmul")],
        "else", [], [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [1, 8, 8, 8])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=then, else_branch=other)], "if_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _branch_ops(model: onnx.ModelProto) -> dict[str, Counter]:
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: Counter(n.op_type for n in all_nodes(a.g)) for a in node.attribute}


def _errors(ref: Path, q: Path, xs: np.ndarray, flag: bool) -> tuple[float, float, float]:
    """(max abs error, RMS error, RMS of the FP32 output) over ``xs`` with ``flag``."""
    r, s = ort.InferenceSession(str(ref)), ort.InferenceSession(str(q))
    a = np.stack([r.run(None, {"x": x, "flag": np.array(flag)})[0] for x in xs])
    b = np.stack([s.run(None, {"x": x, "flag": np.array(flag)})[0] for x in xs])
    return float(np.abs(a - b).max()), float(np.sqrt(np.mean((a - b) ** 2))), float(np.sqrt(np.mean(a ** 2)))


@pytest.fixture()
def model_and_data(tmp_path: Path) -> tuple[Path, np.ndarray]:
    src = tmp_path / "m.onnx"
    onnx.save(if_conv_net(), str(src))
    return src, RNG.normal(size=(16, *X_SHAPE)).astype(np.float32)


def test_folding_body_weights_is_exact_and_leaves_no_constant_weight(model_and_data, tmp_path: Path) -> None:
    src, xs = model_and_data
    model = onnx.load(str(src))
    assert fold_body_weights(model) == 3          # wt, the Concat of wa/wb, m
    onnx.checker.check_model(model)
    ops = _branch_ops(model)
    assert ops["else_branch"]["Concat"] == 0 and ops["then_branch"]["Constant"] == 0
    onnx.save(model, str(tmp_path / "folded.onnx"))
    for flag in (True, False):
        assert _errors(src, tmp_path / "folded.onnx", xs[:2], flag)[0] == 0.0


def test_dynamic_quantizes_matmul_and_conv_inside_both_branches(model_and_data, tmp_path: Path) -> None:
    src, xs = model_and_data
    out = tmp_path / "dyn.onnx"
    res = api.quantize(src, out, mode="dynamic", op_types=["Conv", "MatMul"])
    assert not any("nothing was quantized" in w for w in res.warnings)
    ops = _branch_ops(onnx.load(str(out)))
    assert ops["then_branch"]["ConvInteger"] == 1 and ops["then_branch"]["Conv"] == 0
    assert ops["else_branch"]["ConvInteger"] == 1 and ops["else_branch"]["MatMulInteger"] == 1
    for flag in (True, False):
        _, rms_err, rms = _errors(src, out, xs[:4], flag)
        assert rms_err < 0.05 * rms
    cov = local_cpu().coverage(out)
    assert (cov.quantized_compute_ops, cov.compute_ops) == (3, 3)


def test_dynamic_default_quantizes_the_body_matmul(model_and_data, tmp_path: Path) -> None:
    src, _ = model_and_data
    out = tmp_path / "dyn.onnx"
    api.quantize(src, out, mode="dynamic")          # default ops: MatMul/Gemm/LSTM, no slow ConvInteger
    ops = _branch_ops(onnx.load(str(out)))
    assert ops["else_branch"]["MatMulInteger"] == 1 and ops["else_branch"]["Conv"] == 1


def test_static_calibrates_each_branch_on_the_samples_that_take_it(model_and_data, tmp_path: Path) -> None:
    src, xs = model_and_data
    flags = np.arange(len(xs)) % 2 == 0
    np.savez(tmp_path / "calib.npz", x=xs, flag=flags)
    out = tmp_path / "static.onnx"
    res = api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"))
    assert "if/then_branch: quantized in static mode on the 8 calibration sample(s) that take it" in res.notes
    assert "if/else_branch: quantized in static mode on the 8 calibration sample(s) that take it" in res.notes
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = _branch_ops(model)
    assert ops["then_branch"]["QuantizeLinear"] and ops["else_branch"]["DequantizeLinear"]
    optimized = _branch_ops(local_cpu().optimized_graph(out, "extended"))
    assert optimized["then_branch"]["QLinearConv"] == 1 and optimized["else_branch"]["QLinearConv"] == 1
    cov = local_cpu().coverage(out)
    assert cov.quantized_compute_ops == cov.compute_ops == 3
    for flag in (True, False):    # as close as quantizing the branch as a model of its own (1-2% RMS)
        _, rms_err, rms = _errors(src, out, xs, flag)
        assert rms_err < 0.05 * rms


def test_static_branch_no_sample_takes_stays_float_and_says_why(model_and_data, tmp_path: Path) -> None:
    src, xs = model_and_data
    np.savez(tmp_path / "calib.npz", x=xs[:6], flag=np.ones(6, bool))
    out = tmp_path / "static.onnx"
    res = api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"))
    assert ("If/Loop/Scan body if/else_branch stays float: no calibration sample takes this branch "
            "(no data to calibrate it on)") in res.notes
    ops = _branch_ops(onnx.load(str(out)))
    assert ops["then_branch"]["QuantizeLinear"] and not ops["else_branch"]["QuantizeLinear"]
    cov = local_cpu().coverage(out)
    assert (cov.quantized_compute_ops, cov.compute_ops) == (1, 3)
    assert sorted(cov.float_compute_nodes) == ["else_conv", "else_matmul"]
    assert _errors(src, out, xs[6:], False)[0] < 1e-5        # the float branch is the FP32 branch


def if_lstm_net() -> onnx.ModelProto:
    """An LSTM in an If body whose weights are Constant nodes (silero_vad's decoder)."""
    hidden, feat = 16, 8
    w = RNG.normal(0, 0.3, (1, 4 * hidden, feat))
    r = RNG.normal(0, 0.3, (1, 4 * hidden, hidden))
    body = helper.make_graph(
        [_const("w", w), _const("r", r),
         helper.make_node("LSTM", ["x", "w", "r"], ["seq", "h"], name="lstm", hidden_size=hidden)],
        "then", [], [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden])])
    other = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                               helper.make_node("Concat", ["m", "m"], ["o"], axis=2)], "else", [],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 1, hidden])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=body, else_branch=other)], "if_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, feat]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_dynamic_quantizes_an_lstm_in_a_body_and_coverage_counts_it(tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(if_lstm_net(), str(src))
    api.quantize(src, out, mode="dynamic")
    assert _branch_ops(onnx.load(str(out)))["then_branch"]["DynamicQuantizeLSTM"] == 1
    cov = local_cpu().coverage(out)
    assert (cov.quantized_compute_ops, cov.compute_ops) == (1, 1)
    x = RNG.normal(size=(3, 1, 8)).astype(np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"x": x, "flag": np.array(True)})[0]
    b = ort.InferenceSession(str(out)).run(None, {"x": x, "flag": np.array(True)})[0]
    assert np.abs(a - b).max() < 0.05


def test_verdict_quotes_why_a_body_stayed_float_when_nothing_else_was_quantized() -> None:
    """A model whose compute all sits in a Loop body: 'no op to quantize here' was wrong."""
    from edgequant.measure.coverage import BODY_FLOAT_NOTE, Coverage
    from edgequant.measure.fidelity import Fidelity
    from edgequant.measure.latency import LatencyStats, Speedup
    from edgequant.qdq.subgraph_static import LOOP_REASON
    from edgequant.variant import Variant
    from edgequant.verdict import Budget, recommend

    def variant(name: str, notes: list[str]) -> Variant:
        return Variant(name=name, path=f"/m/{name}.onnx", config={"mode": name}, size_bytes=1000,
                       latency=LatencyStats.from_samples([1.0] * 5), speed=Speedup(1.0, 0.99, 1.01, 0.95, 1000),
                       fidelity=Fidelity(cosine=1.0, sqnr_db=60.0, max_abs_err=0.0, top1_agreement=None),
                       coverage=Coverage(0, 4, ["a", "b", "c", "d"]), notes=notes)

    vs = [variant("fp32", []), variant("static", [f"{BODY_FLOAT_NOTE}loop/body stays float: {LOOP_REASON}"]),
          variant("dynamic", [])]
    recommend(vs, Budget())
    assert vs[1].verdict == ("nothing quantized: none of the 4 compute ops runs as an INT8 kernel (the compute is in "
                             f"control-flow bodies: loop/body stays float: {LOOP_REASON})")
    assert vs[2].verdict.endswith("(recipe dynamic has no op to quantize here)")


def loop_matmul_net() -> onnx.ModelProto:
    """A Loop (3 trips) whose body multiplies the carried [1, 8] vector by a Constant weight."""
    w = RNG.normal(0, 0.4, (8, 8))
    body = helper.make_graph(
        [_const("w", w), helper.make_node("MatMul", ["v_in", "w"], ["mm"], name="loop_matmul"),
         helper.make_node("Tanh", ["mm"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 8])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)], "loop_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.array(True), "go")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_loop_body_dynamic_quantizes_static_explains(tmp_path: Path) -> None:
    from edgequant.qdq.subgraph_static import LOOP_REASON

    src = tmp_path / "m.onnx"
    onnx.save(loop_matmul_net(), str(src))
    xs = RNG.normal(size=(6, 1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    api.quantize(src, tmp_path / "dyn.onnx", mode="dynamic")
    body = next(a.g for a in onnx.load(str(tmp_path / "dyn.onnx")).graph.node[0].attribute if a.name == "body")
    assert "MatMulInteger" in {n.op_type for n in body.node}
    ref, q = ort.InferenceSession(str(src)), ort.InferenceSession(str(tmp_path / "dyn.onnx"))
    for x in xs:
        assert np.abs(ref.run(None, {"x": x})[0] - q.run(None, {"x": x})[0]).max() < 0.05
    res = api.quantize(src, tmp_path / "static.onnx", mode="static", calib=str(tmp_path / "x.npy"))
    assert f"If/Loop/Scan body loop/body stays float: {LOOP_REASON}" in res.notes
