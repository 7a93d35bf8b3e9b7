"""The streaming quantizer for models over 2 GiB (edgequant.qdq.streaming), on small models whose
weights sit in external data: numerically what onnxruntime's quantizer would write, the graphs its
CPU fusions turn into integer kernels, Gemm/shared/excluded weights, and quantize_model's routing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant import qmath
from edgequant.errors import EdgequantError
from edgequant.quantize import make_config
from edgequant.qdq.streaming import activation_inputs, quantize_streaming
from edgequant.targets import auto_target

HOST = auto_target()   # outputs are checked on this CPU: quantize for it (AVX2 saturates VNNI models)

RNG = np.random.default_rng(7)


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def _chain(tmp_path: Path) -> Path:
    """x -> MatMul W0 -> MatMul W0 (shared) -> Gemm(transB, bias) W1 -> Relu -> MatMul W2 ("head")."""
    w0 = RNG.standard_normal((64, 64)).astype(np.float32) / 8
    w1 = RNG.standard_normal((32, 64)).astype(np.float32) / 8       # Gemm transB: stored [N, K]
    w2 = RNG.standard_normal((32, 16)).astype(np.float32) / 6
    bias = RNG.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "W0"], ["h1"], name="mm1"),
             helper.make_node("Gemm", ["h1", "W1", "C"], ["h2"], name="gemm", transB=1),
             helper.make_node("Relu", ["h2"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="head")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "W0"), (w1, "W1"), (w2, "W2"), (bias, "C"))]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return _save_external(model, tmp_path / "chain.onnx")


def _run(path: Path, x: np.ndarray, *, optimized: Path | None = None) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return qmath.sqnr_db(ref, got)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_matches_onnxruntimes_quantizer_on_matmuls(tmp_path: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = RNG.standard_normal((96, 40)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 40])],
                              [numpy_helper.from_array(w, "W")])
    src = _save_external(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    ours, theirs = tmp_path / "out" / "ours.onnx", tmp_path / "theirs.onnx"
    ours.parent.mkdir()
    summary = quantize_streaming(src, ours, make_config("dynamic", "x86-vnni", per_channel=per_channel))
    quantize_dynamic(str(src), str(theirs), per_channel=per_channel, weight_type=QuantType.QInt8)
    assert summary.quantized == ["mm"] and not summary.float_nodes
    q_ours = numpy_helper.to_array(next(t for t in onnx.load(str(ours)).graph.initializer if t.name == "W_quantized"))
    q_theirs = numpy_helper.to_array(next(t for t in onnx.load(str(theirs)).graph.initializer
                                          if t.name == "W_quantized"))
    assert q_ours.dtype == np.int8 and q_ours.shape == (96, 40)
    diff = np.abs(q_ours.astype(int) - q_theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002        # float64 vs float32 division at a half step
    x = RNG.standard_normal((4, 96)).astype(np.float32)
    assert _sqnr(_run(theirs, x), _run(ours, x)) > 40


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_every_weight_quantized_and_fused_by_onnxruntime(tmp_path: Path, mode: str) -> None:
    src = _chain(tmp_path)
    before = _digest(tmp_path)
    config = make_config(mode, HOST, per_channel=True)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    ranges = None
    if mode == "static":
        assert activation_inputs(src, config) == ["h0", "h1", "r", "x"]
        fp32_model = onnx.load(str(src))
        fp32_model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                       for t in ("h0", "h1", "r"))
        probe = tmp_path / "probe" / "probe.onnx"
        probe.parent.mkdir()
        onnx.save(fp32_model, str(probe))
        import onnxruntime as ort

        calib = [RNG.standard_normal((4, 64)).astype(np.float32) for _ in range(8)] + [x]
        outs = [ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"]).run(None, {"x": c}) for c in calib]
        ranges = {"x": (min(c.min() for c in calib), max(c.max() for c in calib))}
        for k, t in enumerate(("h0", "h1", "r"), start=1):
            ranges[t] = (min(o[k].min() for o in outs), max(o[k].max() for o in outs))
    out = tmp_path / "q" / "chain.int8.onnx"
    summary = quantize_streaming(src, out, config, ranges=ranges)
    assert _digest(tmp_path) == before or set(_digest(tmp_path)) - set(before) <= {"probe"}   # inputs untouched
    assert sorted(summary.quantized) == ["gemm", "head", "mm0", "mm1"]
    assert summary.weights_in_bytes == 4 * (64 * 64 + 32 * 64 + 32 * 16)             # W0 once, though read twice
    assert summary.weights_out_bytes == summary.weights_in_bytes // 4
    header = onnx.load(str(out), load_external_data=False)
    assert {"W0", "W1", "W2"}.isdisjoint(t.name for t in header.graph.initializer)   # no float copy left
    for t in header.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == out.name + ".data" and int(info["offset"]) % 65536 == 0
    assert (out.parent / (out.name + ".data")).is_file()
    opt = tmp_path / "q" / "opt.onnx"
    got = _run(out, x, optimized=opt)
    fused = [n.op_type for n in onnx.load(str(opt)).graph.node]
    # static: a MatMul whose output is quantized for the next one fuses into QLinearMatMul/QGemm
    kernels = {"DynamicQuantizeMatMul"} if mode == "dynamic" else {"MatMulIntegerToFloat", "QLinearMatMul", "QGemm"}
    assert sum(op in kernels for op in fused) == 4 and "MatMul" not in fused and "Gemm" not in fused, fused
    assert _sqnr(_run(src, x), got) > 25


def test_excluded_and_op_type_filtered_nodes_stay_float(tmp_path: Path) -> None:
    src = _chain(tmp_path)
    config = make_config("dynamic", HOST, exclude=["head"], op_types=["MatMul"])
    out = tmp_path / "q.onnx"
    summary = quantize_streaming(src, out, config)
    assert sorted(summary.quantized) == ["mm0", "mm1"]
    assert summary.float_nodes == {"head": "excluded"}
    header = onnx.load(str(out), load_external_data=False)
    ops = [n.op_type for n in header.graph.node]
    assert ops.count("Gemm") == 1 and ops.count("MatMul") == 1 and ops.count("MatMulInteger") == 2
    kept = {t.name: t for t in header.graph.initializer}
    assert kept["W1"].data_location == TensorProto.EXTERNAL           # float weights copied into the new file
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    assert _sqnr(_run(src, x), _run(out, x)) > 25


def test_truncated_external_data_is_one_clear_error(tmp_path: Path) -> None:
    src = _chain(tmp_path)
    data = tmp_path / "chain.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    out = tmp_path / "q.onnx"
    with pytest.raises(EdgequantError, match="shorter than its shape says"):
        quantize_streaming(src, out, make_config("dynamic", "x86-vnni"))
    assert not out.exists() and not (tmp_path / "q.onnx.data").exists()        # nothing half-written


def test_quantize_model_streams_models_over_the_limit(tmp_path: Path, monkeypatch) -> None:
    """quantize_model takes the streaming path whenever the model is over model.is_large's limit
    (lowered here so a small model crosses it), for dynamic and static QDQ, and refuses the FP32
    passes that would load every weight."""
    from edgequant import api
    from edgequant import model as model_io

    src = _chain(tmp_path)
    monkeypatch.setattr(model_io, "_EXTERNAL_DATA_THRESHOLD", 10_000)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    for mode in ("dynamic", "static"):
        out = tmp_path / f"{mode}.onnx"
        res = api.quantize(src, out, mode=mode, target="x86-vnni", calib="random:8" if mode == "static" else None)
        assert any("streamed the weights from disk (4 MatMul/Gemm quantized" in n for n in res.notes), res.notes
        assert _sqnr(_run(src, x), _run(out, x)) > 15
    with pytest.raises(EdgequantError, match="--adaround not supported on a model over 2 GiB"):
        api.quantize(src, tmp_path / "ada.onnx", mode="static", target="x86-vnni", calib="random:8", adaround=True)
