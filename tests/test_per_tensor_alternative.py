"""INT8 with per-tensor weights is a candidate next to per-channel where it can pay (static: depthwise
convolutions; dynamic: models whose compute is all weight MatMul/Gemm; on a CPU target), in run and
in tune, and the budget and the timing choose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_models
from onnx import TensorProto, helper, numpy_helper

from edgequant.model import dense_compute_only, has_depthwise_conv
from edgequant.pipeline import default_variants
from edgequant.tune.recipes import default_recipes

RNG = np.random.default_rng(2)


def _depthwise_net() -> onnx.ModelProto:
    """x[1,8,16,16] -> depthwise 3x3 (8) -> Relu -> 1x1 (8 -> 16) -> y."""
    inits = [numpy_helper.from_array((RNG.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32), "dw.w"),
             numpy_helper.from_array((RNG.standard_normal((16, 8, 1, 1)) * 0.3).astype(np.float32), "pw.w")]
    nodes = [helper.make_node("Conv", ["x", "dw.w"], ["d"], group=8, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "pw.w"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_depthwise_convs_are_found_from_weight_shapes_alone() -> None:
    assert has_depthwise_conv(_depthwise_net())
    assert not has_depthwise_conv(onnx_models.conv_net(opset=13, channels=8, size=8))


def test_run_and_tune_add_per_tensor_static_only_where_it_can_pay() -> None:
    dw, plain = _depthwise_net(), onnx_models.conv_net(opset=13, channels=8, size=8)
    variants = dict(default_variants("x86-vnni", dw))
    assert list(variants) == ["dynamic", "static", "static-per-tensor"]
    assert variants["static"].per_channel and not variants["static-per-tensor"].per_channel
    assert [n for n, _ in default_variants("x86-vnni", plain)] == ["dynamic", "static"]
    # an accelerator without a float path keeps its own defaults
    assert "static-per-tensor" not in [n for n, _ in default_variants("qnn", dw)]
    recipes = {r.name: r for r in default_recipes("x86-vnni", dw)}
    assert list(recipes) == ["dynamic", "static", "static-per-tensor"]
    assert recipes["static-per-tensor"].per_channel is False
    # one scale per tensor only fits every channel after cross-layer equalization
    assert variants["static-per-tensor"].equalize and recipes["static-per-tensor"].config("x86-vnni").equalize
    assert not variants["static"].equalize
    assert [r.name for r in default_recipes("x86-vnni", plain)] == ["dynamic", "static"]


def test_run_measures_the_per_tensor_candidate_like_any_other(tmp_path: Path) -> None:
    from edgequant.pipeline import RunOptions, run_pipeline

    src = tmp_path / "dw.onnx"
    onnx.save(_depthwise_net(), str(src))
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 8, 16, 16)).astype(np.float32))
    report = run_pipeline(src, tmp_path / "out", calib=str(tmp_path / "calib.npz"),
                          options=RunOptions(runs=5, warmup=1, measure_memory=False, profile=False))
    per_tensor = next(v for v in report["variants"] if v["name"] == "static-per-tensor")
    assert per_tensor["config"]["per_channel"] is False and per_tensor["verdict"]
    weights = [numpy_helper.to_array(t) for t in onnx.load(per_tensor["path"]).graph.initializer]
    scales = [w for w in weights if w.dtype == np.float32 and w.ndim == 1 and w.size == 8]
    assert not scales, "per-tensor weights carry one scale per tensor, not one per channel"


def test_equalization_is_what_makes_per_tensor_weights_accurate(tmp_path: Path) -> None:
    """Depthwise channels whose weights differ 100x in range, the next conv amplifying the narrow ones
    back (what folded BatchNorms produce): per-tensor weights and activations round the narrow channels
    to a few levels unless cross-layer equalization balances them first (exact in FP32)."""
    import onnxruntime as ort

    from edgequant import api

    model = _depthwise_net()
    dw = next(t for t in model.graph.initializer if t.name == "dw.w")
    w = numpy_helper.to_array(dw) * np.logspace(-2, 0, 8, dtype=np.float32).reshape(8, 1, 1, 1)
    dw.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "dw.w"))
    pw = next(t for t in model.graph.initializer if t.name == "pw.w")
    p = numpy_helper.to_array(pw) / np.logspace(-2, 0, 8, dtype=np.float32).reshape(1, 8, 1, 1)
    pw.CopyFrom(numpy_helper.from_array(p.astype(np.float32), "pw.w"))
    src = tmp_path / "dw.onnx"
    onnx.save(model, str(src))
    x = RNG.standard_normal((16, 8, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)

    def sqnr_db(path: Path) -> float:
        ref, out = ([ort.InferenceSession(str(p)).run(None, {"x": s[None]})[0] for s in x] for p in (src, path))
        ref, out = np.concatenate(ref), np.concatenate(out)
        return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2)))

    plain, equalized = tmp_path / "plain.onnx", tmp_path / "equalized.onnx"
    for out, eq in ((plain, False), (equalized, True)):
        api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni",
                     per_channel=False, equalize=eq)
    assert sqnr_db(equalized) > sqnr_db(plain) + 12      # two bits better at least (measured: 6 -> 34 dB)


def test_dense_models_get_a_per_tensor_dynamic_candidate_and_others_do_not() -> None:
    mlp, conv, bert = onnx_models.matmul_net(), onnx_models.conv_net(opset=13, channels=8, size=8), \
        onnx_models.bert_layers()
    assert dense_compute_only(mlp) and not dense_compute_only(conv) and not dense_compute_only(_depthwise_net())
    variants = dict(default_variants("x86-avx2", mlp))
    assert list(variants) == ["dynamic", "dynamic-per-tensor", "static"]
    assert variants["dynamic"].per_channel and variants["dynamic-per-tensor"].per_channel is False
    assert variants["dynamic-per-tensor"].reduce_range == variants["dynamic"].reduce_range   # the target's rule
    recipes = {r.name: r for r in default_recipes("x86-avx2", mlp)}
    assert list(recipes) == ["dynamic", "dynamic-per-tensor", "static"]
    assert recipes["dynamic-per-tensor"].config("x86-avx2").per_channel is False
    # a transformer is all MatMul too, but there per-tensor costs accuracy for no speed: fused/unfused instead
    assert "dynamic-per-tensor" not in dict(default_variants("x86-avx2", bert))
    assert "dynamic-per-tensor" not in [n for n, _ in default_variants("x86-avx2", conv)]
    assert "dynamic-per-tensor" not in [n for n, _ in default_variants("qnn", mlp)]


def test_run_measures_the_per_tensor_dynamic_candidate(tmp_path: Path) -> None:
    from edgequant.pipeline import RunOptions, run_pipeline

    src = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.matmul_net(), str(src))
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 64)).astype(np.float32))
    report = run_pipeline(src, tmp_path / "out", calib=str(tmp_path / "calib.npz"),
                          options=RunOptions(runs=5, warmup=1, measure_memory=False, profile=False))
    variants = {v["name"]: v for v in report["variants"]}
    assert variants["dynamic-per-tensor"]["config"]["per_channel"] is False
    assert variants["dynamic"]["config"]["per_channel"] is True
    assert variants["dynamic-per-tensor"]["verdict"] and variants["dynamic-per-tensor"]["speedup"] is not None
    # per-tensor weights really are one scale per weight: fewer scale values than the per-channel model's
    from onnx import numpy_helper as nh

    def scales(path: str) -> int:
        model = onnx.load(path)
        return sum(nh.to_array(t).size for t in model.graph.initializer if "scale" in t.name)

    assert scales(variants["dynamic-per-tensor"]["path"]) < scales(variants["dynamic"]["path"])


def test_dense_compute_is_read_inside_control_flow_bodies() -> None:
    """Exporters wrap MLPs in shape-check Ifs (openWakeWord's classifiers): the Gemm in the branch counts,
    and so does a Conv hidden there."""
    def wrapped(op: str) -> onnx.ModelProto:
        w = numpy_helper.from_array(RNG.standard_normal((8, 4) if op == "Gemm" else (4, 8, 1, 1)).astype(np.float32), "w")
        inner = helper.make_node(op, ["x", "w"], ["y_then"])
        then = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                                  [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
        graph = helper.make_graph(nodes, "wrapped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                                     helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    assert dense_compute_only(wrapped("Gemm"))
    assert not dense_compute_only(wrapped("Conv"))


def test_run_and_tune_draw_the_same_defaults_except_dynamic_on_an_accelerator() -> None:
    """One table feeds both: a new alternative graph reaches run and tune alike, with the same settings."""
    models = [_depthwise_net(), onnx_models.matmul_net(), onnx_models.bert_layers(),
              onnx_models.conv_net(opset=13, channels=8, size=8)]
    for target in ("x86-avx2", "x86-vnni", "x86-amx", "arm64", "qnn"):
        for model in models:
            run = default_variants(target, model)
            tuned = default_recipes(target, model)
            expected = [(n, c) for n, c in run if target != "qnn" or c.mode != "dynamic"]
            assert [r.name for r in tuned] == [n for n, _ in expected], (target, model.graph.name)
            assert [r.config(target) for r in tuned] == [c for _, c in expected], (target, model.graph.name)
    assert [n for n, _ in default_variants("qnn", _depthwise_net())] == ["dynamic", "static", "static-a16w8"]
    assert [r.name for r in default_recipes("qnn", _depthwise_net())] == ["static", "static-a16w8"]
