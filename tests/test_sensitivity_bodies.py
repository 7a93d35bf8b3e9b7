"""Per-node sensitivity inside If branches, and tune's float fallback acting on it (issue 15).

The model: ``If(flag)`` whose then-branch is :func:`test_tune_helpers.sensitive_mlp` (its weights
Constant nodes, as exporters write them; ``then_mm2`` has a 1000-valued weight row that 8-bit
scales destroy) and whose else-branch is one well-behaved MatMul. The top level holds no compute,
so a top-level-only analysis ranks nothing and tune has nothing to fall back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tune_helpers import sensitive_mlp

from edgequant import model as model_io
from edgequant.data import open_source
from edgequant.quantize import make_config, quantize_model
from edgequant.qdq.subgraphs import all_nodes
from edgequant.sensitivity_bodies import analyze_model_with_bodies

FEATURES, CLASSES = 32, 10


def _as_constants(graph: onnx.GraphProto, prefix: str) -> list[onnx.NodeProto]:
    """``graph``'s nodes renamed ``prefix``+name, its initializers as Constant nodes in front."""
    rename = {t.name: prefix + t.name for t in graph.initializer}
    rename.update({o: prefix + o for n in graph.node for o in n.output if o != "y"})
    consts = [helper.make_node("Constant", [], [rename[t.name]], value=t) for t in graph.initializer]
    nodes = []
    for n in graph.node:
        nodes.append(helper.make_node(n.op_type, [rename.get(i, i) for i in n.input],
                                      [prefix + "y" if o == "y" else rename[o] for o in n.output],
                                      name=prefix + n.name))
    return consts + nodes


def if_sensitive_mlp(opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    mlp = sensitive_mlp(FEATURES, 64, CLASSES).graph
    then = helper.make_graph(_as_constants(mlp, "then_"), "then", [],
                             [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, ["N", CLASSES])])
    w = rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, CLASSES)).astype(np.float32)
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["else_w"], value=numpy_helper.from_array(w, "else_w")),
         helper.make_node("MatMul", ["x", "else_w"], ["else_y"], name="else_mm")], "else", [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, ["N", CLASSES])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="route", then_branch=then, else_branch=other)], "if_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model)
    return model


@pytest.fixture()
def if_sensitive(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The model, calibration data (both branches taken) and eval data labelled by FP32's arg-max."""
    import onnxruntime as ort

    path = tmp_path / "if_sensitive.onnx"
    onnx.save(if_sensitive_mlp(), str(path))
    rng = np.random.default_rng(1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.normal(0, 1, (24 + 12000, FEATURES)).astype(np.float32)
    flags = rng.random(len(x)) < 0.75
    ys = np.concatenate([sess.run(None, {"x": x[k:k + 1], "flag": np.array(f)})[0] for k, f in enumerate(flags)])
    top2 = np.sort(ys, axis=1)[:, -2:]
    keep = 24 + np.where(top2[24:, 1] - top2[24:, 0] > 1.0)[0][:600]   # clear winners only: a decided budget
    calib, evals = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, x=x[:24], flag=flags[:24])
    np.savez(evals, x=x[keep], flag=flags[keep], labels=np.argmax(ys[keep], axis=1))
    return path, calib, evals


def _source(model: Path, data: Path):
    return open_source(str(data), model_io.graph_inputs(model_io.load_model(model)))


def _static(model: Path, calib: Path, out: Path, **kw) -> Path:
    # MinMax ranges as ORT sets them (the planted weight row is what breaks then_mm2)
    quantize_model(model, out, make_config("static", "x86-avx2", robust_ranges=False, **kw), _source(model, calib))
    return out


def test_body_node_that_introduces_the_error_ranks_first(if_sensitive, tmp_path: Path) -> None:
    from edgequant.tune.recipes import Recipe, fallback_recipe, keeps_int8

    model, calib, _ = if_sensitive
    qdq = _static(model, calib, tmp_path / "static.onnx")
    report = analyze_model_with_bodies(model, qdq, _source(model, calib), target="x86-avx2", limit=16)
    first = report.nodes[0]
    assert first.name.startswith("then_mm2") and first.cause == "weights" and first.drop_db > 20
    assert all(n.drop_db < first.drop_db / 2 for n in report.nodes[1:])
    names = {n.name.split("/")[0] for n in report.nodes}
    assert {"then_mm1", "then_mm3", "then_mm4", "else_mm"} <= names     # both branches ranked
    assert "route" not in names                                          # the If itself: its branches' nodes say it
    assert any(note.startswith("route/then_branch: ") and "ranked on the" in note for note in report.notes)
    # the region keeps a neighbour float, within the branch
    assert [r.split("/")[0] for r in first.region] == ["then_mm2", "then_mm1"]
    # body compute counts: a fallback of every ranked compute node leaves no INT8 to gain from
    base = Recipe("static", "static")
    assert keeps_int8(fallback_recipe(base, [first], sixteen_bit=False), report)
    assert not keeps_int8(fallback_recipe(base, report.nodes, sixteen_bit=False), report)


def test_excluding_the_ranked_body_region_keeps_it_float(if_sensitive, tmp_path: Path) -> None:
    """The names the ranking gives are the ones --exclude takes, and the branch quantizer honours them."""
    model, calib, _ = if_sensitive
    qdq = _static(model, calib, tmp_path / "static.onnx")
    first = analyze_model_with_bodies(model, qdq, _source(model, calib), target="x86-avx2", limit=8).nodes[0]
    out = _static(model, calib, tmp_path / "excluded.onnx", exclude=list(first.region))
    q = onnx.load(str(out))
    producers = {o: n for n in all_nodes(q.graph) for o in n.output}
    by_name = {n.name: n for n in all_nodes(q.graph)}
    for name in first.region:        # float: no dequantized weight or activation feeds it
        assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                       for i in by_name[name].input), name
    mm3 = next(n for n in all_nodes(q.graph) if n.name.startswith("then_mm3"))
    assert any(producers[i].op_type == "DequantizeLinear" for i in mm3.input if i in producers)


def test_16bit_override_of_a_body_tensor_reaches_the_branch_quantizer(if_sensitive, tmp_path: Path) -> None:
    """tune's int16 range recipe names body tensors: the top-level quantizer must not see them
    (onnxruntime refuses an override for a tensor not in its graph), the branch's must. 16-bit
    Q/DQ needs opset 21: an older model keeps that branch float and says why, it does not fail."""
    from onnxruntime.quantization import QuantType

    model, calib, _ = if_sensitive
    overrides = {"TensorQuantOverrides": {"then_h2": [{"quant_type": QuantType.QUInt16}]}}
    model21 = tmp_path / "opset21.onnx"
    onnx.save(if_sensitive_mlp(opset=21), str(model21))
    q = onnx.load(str(_static(model21, calib, tmp_path / "q16.onnx", extra_options=overrides)))
    then = next(a.g for a in q.graph.node[0].attribute if a.name == "then_branch")
    inits = {t.name: t for t in then.initializer}
    zero_points = [inits[n.input[2]] for n in then.node if n.op_type == "QuantizeLinear" and n.input[0] == "then_h2"]
    assert zero_points and zero_points[0].data_type == TensorProto.UINT16

    src = _source(model, calib)
    res = quantize_model(model, tmp_path / "q13.onnx", make_config("static", "x86-avx2", extra_options=overrides), src)
    assert any("route/then_branch stays float" in n and "needs opset 21" in n for n in res.notes), res.notes
    assert "route/else_branch: quantized in static mode on the 8 calibration sample(s) that take it" in res.notes


def test_tune_falls_back_the_body_node_and_ends_within_budget(if_sensitive, tmp_path: Path) -> None:
    from edgequant.pipeline import RunOptions
    from edgequant.tune import TuneOptions, run_tune

    model, calib, evals = if_sensitive
    run = RunOptions(target="x86-avx2", runs=20, warmup=2, memory_runs=2)
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=TuneOptions(run=run, trial_runs=10, trial_warmup=1, workers=1, qat_minutes=0))
    trace = report["search_trace"]
    assert not next(r for r in trace if r["name"] == "static")["within_budget"]     # then_mm2 destroyed
    assert report["tune"]["sensitivity"]["ranked"][0]["name"].startswith("then_mm2")
    passing = [r for r in trace if r["within_budget"] and r["float_nodes"]]
    assert passing and passing[0]["stage"] == "fallback", [(r["name"], r["outcome"]) for r in trace]
    best = passing[0]
    # then_mm2 plus the neighbour ORT needs float to honour it; the rest of both branches stays INT8
    assert sorted(n.split("/")[0] for n in best["float_nodes"]) == ["then_mm1", "then_mm2"]
    assert best["coverage"]["quantized_compute_ops"] == 3
    rec = report["recommended"]
    if rec != "fp32":          # timing is not asserted (2 noisy cores): only that the pick is honest
        v = next(v for v in report["variants"] if v["name"] == rec)
        assert v["within_budget"] and v["speedup_ci"][0] > 1.0


def test_a_within_budget_candidate_without_int8_compute_does_not_end_the_search() -> None:
    """silero_vad: the 16-bit range recipe names branch tensors, the branch is refused at opset 13
    and stays float, so that candidate is FP32 at a cost; the search must go on to the fallbacks."""
    from edgequant.tune.recipes import Recipe
    from edgequant.tune.search import _settles
    from edgequant.tune.trials import Trial

    recipe = Recipe("static-int16-ranges", "static", stage="ranges")
    all_float = Trial(recipe, {}, within_budget=True, coverage={"quantized_compute_ops": 0, "compute_ops": 16})
    int8 = Trial(recipe, {}, within_budget=True, coverage={"quantized_compute_ops": 5, "compute_ops": 16})
    assert not _settles([all_float]) and _settles([all_float, int8])
