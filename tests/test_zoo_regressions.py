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


def if_verifier_net() -> onnx.ModelProto:
    """x -> Gemm -> Sigmoid = p; If(p >= 0.5) runs a second Gemm whose weights are top-level
    initializers read from inside the then-branch, else returns p (openWakeWord's classifiers)."""
    rng = np.random.default_rng(3)
    then = helper.make_graph(
        [helper.make_node("Gemm", ["x", "vw", "vb"], ["v"], name="verifier", transB=1),
         helper.make_node("Sigmoid", ["v"], ["then_out"], name="verifier_sigmoid")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 1])])
    other = helper.make_graph([helper.make_node("Identity", ["p"], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 1])])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logit"], name="head", transB=1),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
             helper.make_node("GreaterOrEqual", ["p", "half"], ["cond2d"], name="ge"),
             helper.make_node("Squeeze", ["cond2d"], ["cond"], name="squeeze"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    inits = [_f32("w", rng.normal(0, 0.3, (1, 16))), _f32("b", [0.0]), _f32("vw", rng.normal(0, 0.3, (1, 16))),
             _f32("vb", [0.1]), _f32("half", [[0.5]])]
    graph = helper.make_graph(nodes, "if_verifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_if_body_reading_top_level_initializers_quantizes_in_both_modes(tmp_path: Path) -> None:
    """quantize_dynamic failed with 'unknown initializers' (Gemm -> MatMul's clean-up dropped the
    body's weights); quantize_static deleted them as unused and onnxruntime refused the result."""
    src = tmp_path / "m.onnx"
    onnx.save(if_verifier_net(), str(src))
    x = np.random.default_rng(4).normal(size=(8, 1, 16)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    ref = ort.InferenceSession(str(src))
    for mode in ("dynamic", "static"):
        out = tmp_path / f"{mode}.onnx"
        api.quantize(src, out, mode=mode, calib=str(tmp_path / "calib.npy") if mode == "static" else None)
        q = ort.InferenceSession(str(out))
        for sample in x:
            assert abs(q.run(None, {"x": sample})[0].item() - ref.run(None, {"x": sample})[0].item()) < 0.1


def test_subgraph_local_initializers_moves_only_what_the_body_reads() -> None:
    model = if_verifier_net()
    assert prepare_mod._subgraph_local_initializers(model) == 2
    then = next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")
    assert sorted(t.name for t in then.initializer) == ["vb", "vw"]
    assert sorted(t.name for t in model.graph.initializer) == ["b", "half", "w"]
    onnx.checker.check_model(model)


def test_bench_feeds_a_scalar_input_as_a_scalar(tmp_path: Path) -> None:
    """silero_vad's sample rate is an int64 scalar input; the timing feeds went through
    np.ascontiguousarray, which turned [] into [1], and every benchmark of the model failed."""
    graph = helper.make_graph([helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
                               helper.make_node("Mul", ["x", "srf"], ["y"])], "scalar_in",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((3, 1, 4), np.float32), sr=np.full(3, 16000, np.int64))
    res = api.bench([tmp_path / "m.onnx"], input=str(tmp_path / "d.npz"), warmup=1, runs=3)
    assert res.sweep[0].models[0].latency.to_dict()["p50"] > 0


def test_a_compute_op_inside_an_if_body_is_quantized_or_explained_not_unknown(tmp_path: Path) -> None:
    """silero_vad's convolutions all sit in If bodies; every one was reported 'stays float: unknown'.
    The taken branch is now quantized on the samples that take it (qdq.subgraph_static)."""
    src = tmp_path / "m.onnx"
    onnx.save(if_verifier_net(), str(src))
    np.save(tmp_path / "calib.npy", np.random.default_rng(5).normal(size=(4, 1, 16)).astype(np.float32))
    res = api.quantize(src, tmp_path / "q.onnx", mode="static", calib=str(tmp_path / "calib.npy"))
    assert not [n for n in res.notes if n.endswith("stays float: unknown")]
    assert any(n.startswith("if/then_branch: quantized in static mode") for n in res.notes)
    assert any("2 of 2 compute ops run as INT8 kernels" in n for n in res.notes)


def _dies_on_boom(job: str) -> dict:
    """A stand-in for run_quantize_job: its process dies the way the OOM killer ends it."""
    import os
    import signal

    if job == "boom":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"ok": True, "job": job}


def test_a_worker_killed_mid_search_fails_its_job_only() -> None:
    """PP-OCR's detector: one tune recipe's calibration took 11 GB, the OOM killer ended its
    worker, and BrokenProcessPool ended the whole tune (the fleet lost the model)."""
    from edgequant.jobs import quantize_batch

    got = quantize_batch(["a", "boom", "b"], workers=2, fn=_dies_on_boom)
    assert got[0] == {"ok": True, "job": "a"} and got[2] == {"ok": True, "job": "b"}
    assert got[1]["ok"] is False and "SIGKILL" in got[1]["error"] and "out-of-memory" in got[1]["error"]


def _sleeps_on_slow(job: str) -> dict:
    import time

    if job == "slow":
        time.sleep(120)
    return {"ok": True, "job": job}


def test_a_batch_past_its_time_budget_is_stopped_and_the_rest_stands() -> None:
    """MiniLM's tune with --time-budget 3: an AdaRound batch started just before the end held the
    search for many minutes. Jobs still running at the timeout are ended and fail with the reason."""
    import time

    from edgequant.jobs import quantize_batch

    start = time.monotonic()
    got = quantize_batch(["a", "slow", "b"], workers=2, fn=_sleeps_on_slow, timeout_s=8.0)
    assert time.monotonic() - start < 60
    assert got[0] == {"ok": True, "job": "a"} and got[2] == {"ok": True, "job": "b"}
    assert got[1]["ok"] is False and got[1].get("timed_out") and "time budget" in got[1]["error"]
    one = quantize_batch(["slow"], workers=1, fn=_sleeps_on_slow, timeout_s=3.0)   # one worker: still stoppable
    assert one[0].get("timed_out")
