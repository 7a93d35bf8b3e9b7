"""Output roles: each output is judged by what it is (issue: an embedding's arg-max means nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.errors import EdgequantError
from edgequant.measure.fidelity import compare_outputs
from edgequant.measure.roles import detect_roles
from edgequant.verdict import Budget


def _embedding_model() -> onnx.ModelProto:
    """tokens [N, T, D] -> MatMul -> mean pooling -> L2 normalisation -> [N, 32]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (16, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("ReduceL2", ["pooled"], ["norm"], axes=[1], keepdims=1),
             helper.make_node("Div", ["pooled", "norm"], ["vec"])]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                          [helper.make_tensor_value_info("vec", TensorProto.FLOAT, [1, 32])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _softmax_classifier() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(16, 1000, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["out"], axis=-1)]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1000])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _layernorm_tokens(name: str, norm: bool = True) -> onnx.ModelProto:
    """tokens [1, 8, 16] -> MatMul -> (LayerNormalization) -> [1, 8, 16]: a transformer layer's end."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(16, np.float32), "g")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h" if norm else name])]
    if norm:
        nodes.append(helper.make_node("LayerNormalization", ["h", "g"], [name], axis=-1))
    g = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_roles_from_the_graph(tmp_path: Path) -> None:
    regression = onnx.load(str(mlp(tmp_path / "reg.onnx", layers=2, width=64, classes=256)))
    small = onnx.load(str(mlp(tmp_path / "cls.onnx", layers=2, classes=10)))
    assert detect_roles(regression)["y"].role == "dense"                 # 256 wide, no softmax: regression
    assert detect_roles(small)["y"].role == "classifier"                  # a final MatMul into 10 classes
    assert detect_roles(_softmax_classifier())["out"].role == "classifier"   # 1000 classes after Softmax
    emb = detect_roles(_embedding_model())["vec"]
    assert emb.role == "embedding" and "L2" in emb.reason
    assert detect_roles(regression, {"y": "embedding"})["y"].role == "embedding"
    hidden = detect_roles(_layernorm_tokens("last_hidden_state"))["last_hidden_state"]
    assert hidden.role == "embedding" and "LayerNormalization" in hidden.reason   # not per-position "scores"
    assert detect_roles(_layernorm_tokens("out", norm=False))["out"].role == "sequence"
    with pytest.raises(EdgequantError, match="no output 'nope'"):
        detect_roles(regression, {"nope": "dense"})
    with pytest.raises(EdgequantError, match="unknown role"):
        detect_roles(regression, {"y": "logits"})


def test_regression_output_is_judged_by_cosine_not_argmax() -> None:
    """The issue's MLP: a 256-wide regression output with cosine 0.9999 and one arg-max flip in 32."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, (32, 1, 256)).astype(np.float32)
    ref[:, 0, 0] = 5.0                                  # a clear arg-max in every sample...
    cand = ref + rng.normal(0, 0.01, ref.shape).astype(np.float32)
    cand[0, 0, 1] = 6.0                                 # ...flipped once
    as_classifier = compare_outputs({"y": ref}, {"y": cand})
    as_dense = compare_outputs({"y": ref}, {"y": cand}, {"y": "dense"})
    assert not Budget().check(None, None, as_classifier.to_dict())[0]            # old rule: rejected
    ok, why = Budget().check(None, None, as_dense.to_dict())
    assert ok and "cosine" in why and as_dense.top1_agreement is None


def test_embedding_proxies_measure_retrieval() -> None:
    rng = np.random.default_rng(2)
    anchors = rng.normal(0, 1, (20, 1, 32))            # 20 pairs of near-duplicate sentences
    base = np.concatenate([anchors, anchors + rng.normal(0, 0.2, anchors.shape)])
    ref = base / np.linalg.norm(base, axis=-1, keepdims=True)
    good = ref + rng.normal(0, 0.001, ref.shape)
    bad = ref + rng.normal(0, 0.3, ref.shape)            # vectors scrambled: neighbours change
    fg = compare_outputs({"v": ref}, {"v": good}, {"v": "embedding"})
    fb = compare_outputs({"v": ref}, {"v": bad}, {"v": "embedding"})
    assert fg.top1_agreement is None and fg.nn_agreement == 1.0 and fg.mean_sample_cosine > 0.999
    assert fb.nn_agreement < 0.9 and fb.min_sample_cosine < fb.mean_sample_cosine
    assert fg.similarity_rank_corr > 0.999 > fb.similarity_rank_corr      # the whole similarity order
    # 40/40 neighbours kept cannot show >= 0.99 (Wilson 0.91-1.00): undecided, not within budget
    judged = Budget().judge(None, None, fg.to_dict())
    assert judged.decision == "undecided" and judged.samples_needed == 381
    assert Budget(min_nn_agreement=0.9).judge(None, None, fg.to_dict()).decision == "within"
    ok, why = Budget().check(None, None, fb.to_dict())
    assert not ok and "nearest-neighbour" in why


def test_a_failed_nn_check_says_how_many_samples_are_near_ties() -> None:
    """Pairs of near-duplicates: each sample's best and second-best FP32 neighbours differ by less
    than a small perturbation shifts similarities, so neighbours swap; the check says so."""
    rng = np.random.default_rng(4)
    anchors = rng.normal(0, 1, (30, 32))
    base = np.concatenate([anchors + rng.normal(0, 0.05, anchors.shape) for _ in range(3)])   # triplets
    ref = base / np.linalg.norm(base, axis=-1, keepdims=True)
    cand = ref + rng.normal(0, 0.02, ref.shape)
    f = compare_outputs({"v": ref}, {"v": cand}, {"v": "embedding"})
    assert 0 < f.similarity_shift < 0.05 and f.nn_agreement < 0.95
    assert f.nn_thin_margins > 0.1 and f.per_output["v"].nn_thin_margins == f.nn_thin_margins
    ok, why = Budget().check(None, None, f.to_dict())
    assert not ok and "nearest FP32 neighbours closer than that" in why and f"{f.nn_thin_margins:.0%}" in why
    same = compare_outputs({"v": ref}, {"v": ref}, {"v": "embedding"})
    assert same.similarity_shift == 0.0 and same.nn_thin_margins == 0.0


def test_sequence_outputs_use_per_position_agreement() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, (4, 1, 20, 50))
    cand = ref.copy()
    cand[0, 0, :5] = cand[0, 0, :5][:, ::-1]              # 5 of 80 positions change their arg-max
    f = compare_outputs({"s": ref}, {"s": cand}, {"s": "sequence"})
    assert f.top1_agreement == pytest.approx(1 - 5 / 80, abs=1 / 80)


def _detector(anchors: int = 64, coords: int = 16) -> onnx.ModelProto:
    """A BlazeFace-like head: features -> per-anchor boxes [1, A, 16] and scores [1, A, 1]."""
    rng = np.random.default_rng(4)
    wb = numpy_helper.from_array(rng.normal(0, 1, (8, coords)).astype(np.float32), "wb")
    ws = numpy_helper.from_array(rng.normal(0, 1, (8, 1)).astype(np.float32), "ws")
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["regressors"]),
             helper.make_node("MatMul", ["x", "ws"], ["classificators"])]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, anchors, 8])],
                          [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, [1, anchors, coords]),
                           helper.make_tensor_value_info("classificators", TensorProto.FLOAT, [1, anchors, 1])],
                          [wb, ws])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_detection_role_from_the_graph() -> None:
    roles = detect_roles(_detector())
    assert roles["classificators"].role == "detection" and "'regressors'" in roles["classificators"].reason
    assert roles["regressors"].role == "detection"          # not "sequence": [1, A, 16] are boxes here
    # without a box sibling the same scores are no detector; the override makes one
    lone = _detector()
    lone.graph.output.pop(0)
    assert detect_roles(lone)["classificators"].role == "dense"
    assert detect_roles(lone, {"classificators": "detection"})["classificators"].role == "detection"
    assert detect_roles(_detector(), {"regressors": "dense"})["regressors"].role == "dense"


def test_detection_proxies_decisions_and_box_error() -> None:
    """Logit scores: 3 anchors fire per sample in FP32; the candidate loses one in sample 0 and
    its kept boxes move by 0.5 (output units)."""
    n, a = 20, 64
    rng = np.random.default_rng(5)
    scores = np.full((n, 1, a, 1), -8.0)
    scores[:, 0, :3, 0] = 6.0
    boxes = rng.normal(20, 5, (n, 1, a, 16))
    cand_scores, cand_boxes = scores + rng.normal(0, 0.05, scores.shape), boxes.copy()
    cand_scores[0, 0, 2, 0] = -3.0
    cand_boxes[:, 0, :3, :4] += 0.5
    roles = {"classificators": "detection", "regressors": "detection"}
    f = compare_outputs({"classificators": scores, "regressors": boxes},
                        {"classificators": cand_scores, "regressors": cand_boxes}, roles)
    det = f.per_output["classificators"]
    assert det.detection_agreement == pytest.approx(59 / 60) and det.top1_agreement is None
    assert det.box_error == pytest.approx(0.5) and det.box_scale == pytest.approx(20, rel=0.1)
    assert f.detection_agreement == det.detection_agreement and f.box_error == pytest.approx(0.5)
    assert f.to_dict()["intervals"]["detection_agreement"]["trials"] == n     # samples are the unit
    # 59/60 anchors on 20 samples: the interval straddles 0.95 (undecided); the box error passes 5%
    judged = Budget().judge(None, None, f.to_dict())
    by = {c.proxy: c for c in judged.checks}
    assert by["detection_agreement"].decision == "undecided" and by["box_error"].decision == "pass"
    assert judged.decision == "undecided"
    assert Budget(max_box_error=0.1).judge(None, None, f.to_dict()).decision == "over"   # absolute, output units
    # no anchor fires in either model: no decision proxy (cosine judges instead)
    quiet = compare_outputs({"classificators": scores * 0 - 8, "regressors": boxes},
                            {"classificators": scores * 0 - 8, "regressors": boxes}, roles)
    assert quiet.detection_agreement is None and quiet.box_error is None
