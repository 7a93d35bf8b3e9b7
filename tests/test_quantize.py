import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgequant.errors import EdgequantError
from edgequant.quantize import make_config, quantize_model


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_dynamic_matmul_net(tmp_path, matmul_model):
    out = tmp_path / "mlp.dyn.onnx"
    result = quantize_model(matmul_model, out, make_config("dynamic", "x86-avx2"))
    assert result.compression > 3.0
    assert "MatMulInteger" in _ops(out) or "DynamicQuantizeMatMul" in _ops(out)
    x = np.random.default_rng(0).normal(0, 1, (4, 64)).astype(np.float32)
    ref, got = _run(matmul_model, {"x": x}), _run(out, {"x": x})
    cos = float(np.dot(ref.ravel(), got.ravel()) / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.99


def test_dynamic_covers_gemm_by_rewriting_to_matmul(tmp_path, conv_model):
    out = tmp_path / "conv.dyn.onnx"
    result = quantize_model(conv_model, out, make_config("dynamic", "x86-avx2"))
    ops = _ops(out)
    assert "Gemm" not in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    assert "Conv" in ops  # Conv stays float by default: ConvInteger is slow
    assert any("Gemm rewritten" in n for n in result.notes)
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"input": x}), _run(conv_model, {"input": x}), atol=0.05)


def test_dynamic_conv_request_warns(tmp_path, conv_model):
    cfg = make_config("dynamic", "x86-avx2", op_types=["Conv", "MatMul"])
    result = quantize_model(conv_model, tmp_path / "o.onnx", cfg)
    assert any("ConvInteger" in w for w in result.warnings)


def test_target_rules_apply():
    assert make_config("static", "x86-avx2").reduce_range is True
    assert make_config("static", "x86-vnni").reduce_range is False
    assert make_config("static", "x86-avx2", reduce_range=False).reduce_range is False
    assert make_config("static", "arm64").per_channel is True
    with pytest.raises(EdgequantError, match="qnn needs --format qdq"):
        make_config("static", "qnn", quant_format="qoperator")
    with pytest.raises(EdgequantError, match="unknown target"):
        make_config("static", "riscv")


def test_static_requires_calibration(tmp_path, conv_model):
    with pytest.raises(EdgequantError, match="calibration"):
        quantize_model(conv_model, tmp_path / "o.onnx", make_config("static"))


def test_refuses_to_overwrite_input(conv_model):
    before = conv_model.read_bytes()
    with pytest.raises(EdgequantError, match="output path is the input"):
        quantize_model(conv_model, conv_model, make_config("dynamic"))
    assert conv_model.read_bytes() == before


def test_transformer_detection():
    from onnx import helper

    from edgequant.quantize import looks_like_transformer

    import onnx_models

    assert not looks_like_transformer(onnx_models.matmul_net())
    nodes = [helper.make_node("MatMul", ["a", "b"], [f"m{i}"]) for i in range(4)]
    nodes += [helper.make_node("Softmax", ["m0"], ["s"]), helper.make_node("LayerNormalization", ["s", "g"], ["ln"])]
    graph = helper.make_graph(nodes, "t", [], [])
    assert looks_like_transformer(helper.make_model(graph))


def test_static_calibration_sees_every_sample(tmp_path):
    """Regression: the activation range must include an outlier in the first of 64 samples."""
    import onnx
    from onnx import numpy_helper

    import onnx_models
    from edgequant.data import open_source
    from edgequant.model import graph_inputs

    model = onnx_models.save(onnx_models.matmul_net(), tmp_path / "m.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (64, 64)).astype(np.float32)
    x[0, 0] = 50.0
    np.savez(tmp_path / "c.npz", x=x)
    src = open_source(tmp_path / "c.npz", graph_inputs(onnx.load(str(model))))
    out = tmp_path / "q.onnx"
    # ORT's own calibrator must see every sample (robust ranges would rightly saturate this one)
    quantize_model(model, out, make_config("static", "x86-avx2", robust_ranges=False), src)
    q = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = float(inits[qnode.input[1]])
    assert scale * 255 >= 50.0  # uint8 range covers [-1, 50]


@pytest.mark.parametrize("target, expected", [("arm64", np.int8), ("x86-avx2", np.uint8)])
def test_int8_activations_follow_the_target_not_the_host(tmp_path, conv_model, conv_calib, target, expected):
    """arm64 models keep int8 activations even when quantized on x86; x86 gets the exact u8 rewrite."""
    import onnx
    from onnx import numpy_helper

    from edgequant.data import open_source
    from edgequant.model import graph_inputs

    src = open_source(conv_calib, graph_inputs(onnx.load(str(conv_model))))
    out = tmp_path / f"{target}.onnx"
    quantize_model(conv_model, out, make_config("static", target, activation_type="int8"), src)
    m = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    zps = {inits[n.input[2]].dtype for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits}
    assert zps == {np.dtype(expected)}


def test_quantize_job_is_picklable_and_runs_in_a_fresh_process(tmp_path):
    """The job remote workers get: plain data that pickles, re-opens its calibration data itself."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from edgequant.jobs import CalibSpec, QuantizeJob, run_quantize_job
    from edgequant.quantize import make_config

    import onnx_models

    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=8, size=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).normal(0, 1, (4, 3, 8, 8)).astype(np.float32))
    job = QuantizeJob(model, tmp_path / "m.int8.onnx", make_config("static", "x86-avx2"),
                      CalibSpec(str(tmp_path / "calib.npz"), None))
    assert pickle.loads(pickle.dumps(job)) == job
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        res = pool.submit(run_quantize_job, job).result()
    assert res["ok"], res
    assert "QLinearConv" in {n.op_type for n in _optimized_ops(job.out_path)}
    bad = QuantizeJob(model, tmp_path / "bad.onnx", job.config, CalibSpec(str(tmp_path / "missing.npz"), None))
    out = run_quantize_job(bad)
    assert not out["ok"] and "missing.npz" in out["error"]


def _optimized_ops(path):
    from edgequant.devices import local_cpu

    return local_cpu().optimized_graph(path, "extended").graph.node


def test_qnn_fixes_dynamic_input_shapes_from_the_calibration_data(tmp_path, conv_model, conv_calib):
    """HTP compiles static shapes only: a dynamic batch is fixed to the real calibration data's
    shape (the note says so), the input file is left as it was, and random data is refused."""
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    before = conv_model.read_bytes()
    assert not graph_inputs(load_model(conv_model))[0].is_static
    calib = open_source(str(conv_calib), graph_inputs(load_model(conv_model)))
    out = tmp_path / "q.onnx"
    res = quantize_model(conv_model, out, make_config("static", "qnn"), calib)
    (spec,) = graph_inputs(load_model(out))
    assert spec.is_static and list(spec.shape) == [1, 3, 16, 16]
    assert any("dynamic inputs fixed to the calibration data's (input [1, 3, 16, 16])" in n for n in res.notes)
    assert conv_model.read_bytes() == before
    random = open_source("random:4", graph_inputs(load_model(conv_model)))
    with pytest.raises(EdgequantError, match="needs static input shapes"):
        quantize_model(conv_model, tmp_path / "r.onnx", make_config("static", "qnn"), random)
