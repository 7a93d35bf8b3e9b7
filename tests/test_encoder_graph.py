"""Transformer encoders, dynamic: heads read from the graph, the SkipLayerNormalization rewrite,
and the quick interleaved timing that keeps the fastest way to write the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from edgequant.devices import local_cpu
from edgequant.measure.session import SessionConfig
from edgequant.qdq.encoder_graph import attention_shape, unfuse_skip_layernorm
from edgequant.qdq.quick_choice import choose_fastest, choose_robust
from edgequant.qdq.transformers import fuse_transformer
from edgequant.quantize import make_config, quantize_model
from edgequant.targets import auto_target

HOST = auto_target()   # outputs are checked on this CPU: quantize for it (AVX2 saturates VNNI models)


def _feeds(seq: int = 16, hidden: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    mask = np.ones((1, seq), np.int64)
    mask[0, seq - 3:] = 0
    return {"x": rng.normal(0, 1, (1, seq, hidden)).astype(np.float32), "attention_mask": mask}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return local_cpu().outputs([str(path)], [feeds]).outputs[0]["last_hidden_state"][0]


@pytest.mark.parametrize("heads_in_shape", [True, False])
def test_heads_and_hidden_size_from_concat_shape_and_weight_width(heads_in_shape: bool) -> None:
    found = attention_shape(onnx_models.bert_layers(layers=2, heads=4, head_size=8, heads_in_shape=heads_in_shape))
    assert (found.num_heads, found.hidden_size) == (4, 32)
    assert found.reshapes == 6          # Q, K and V of both layers; the context merge is rank 3
    assert "num_heads=4, hidden_size=32" in found.describe()


def test_heads_from_a_constant_shape_with_a_zero_head_size() -> None:
    """Reshape to the constant [0, 0, 6, 0]: head size from the projection's 48 outputs."""
    w = numpy_helper.from_array(np.zeros((16, 48), np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 0, 6, 0], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], [w, shape])
    found = attention_shape(helper.make_model(graph))
    assert (found.num_heads, found.hidden_size) == (6, 48)
    assert attention_shape(onnx_models.matmul_net()) is None     # no head split: nothing to read


def test_attention_fuses_where_the_export_leaves_heads_as_minus_one(tmp_path: Path) -> None:
    """onnxruntime's optimizer alone: "Failed to detect num_heads and hidden_size", no Attention."""
    src = onnx_models.save(onnx_models.bert_layers(heads_in_shape=False), tmp_path / "bert.onnx")
    fused = fuse_transformer(src, tmp_path / "fused.onnx")
    assert fused.fused.get("Attention") == 2
    assert "read from the graph" in fused.heads_from_graph
    feeds = _feeds()
    np.testing.assert_allclose(_run(tmp_path / "fused.onnx", feeds), _run(src, feeds), atol=2e-4)


def test_skip_layernorm_becomes_sum_and_layernorm_exactly(tmp_path: Path) -> None:
    src = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    fuse_transformer(src, tmp_path / "fused.onnx")
    model = onnx.load(str(tmp_path / "fused.onnx"))
    assert sum(n.op_type == "SkipLayerNormalization" for n in model.graph.node) == 4
    assert unfuse_skip_layernorm(model) == 4
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "unfused_sln.onnx"))
    ops = {n.op_type for n in local_cpu().optimized_graph(tmp_path / "unfused_sln.onnx").graph.node}
    assert "SkipLayerNormalization" not in ops and "Sum" in ops   # onnxruntime does not fuse Sum back
    feeds = _feeds()
    np.testing.assert_allclose(_run(tmp_path / "unfused_sln.onnx", feeds), _run(tmp_path / "fused.onnx", feeds),
                               atol=1e-5)


def test_residual_add_becomes_sum_but_a_bias_add_stays(tmp_path: Path) -> None:
    model = onnx_models.bert_layers(layers=1)
    inits = {t.name for t in model.graph.initializer}

    def bias_adds() -> int:
        return sum(n.op_type == "Add" and bool(set(n.input) & inits) for n in model.graph.node)

    before = bias_adds()
    assert unfuse_skip_layernorm(model) == 2          # the two residual Adds before LayerNorms
    assert bias_adds() == before                      # onnxruntime folds these into the MatMuls
    assert [n.input[0] for n in model.graph.node if n.op_type == "Sum"] == ["l0.o", "l0.fc2"]


def test_quick_timing_keeps_the_faster_model(tmp_path: Path) -> None:
    small = onnx_models.save(onnx_models.matmul_net(hidden=16), tmp_path / "small.onnx")
    big = onnx_models.save(onnx_models.matmul_net(hidden=16384), tmp_path / "big.onnx")
    device = local_cpu(SessionConfig(intra_op_threads=1))
    x = {"x": np.ones((1, 64), np.float32)}
    choice = choose_fastest({"big": big, "small": small}, device, x, budget_s=0.5)
    assert choice.chosen == "small"
    assert set(choice.quartile_ms) == {"big", "small"} and choice.quartile_ms["big"] > choice.quartile_ms["small"]
    assert 5 <= choice.rounds <= 30 and "kept small" in choice.describe()
    assert choose_fastest({"only": small}, device, x).why_untimed == "no alternative"


def test_quick_timing_drops_an_alternative_that_cannot_run(tmp_path: Path) -> None:
    """An alternative that fails on the timing inputs is dropped and named, never fatal."""
    small = onnx_models.save(onnx_models.matmul_net(hidden=16), tmp_path / "small.onnx")
    big = onnx_models.save(onnx_models.matmul_net(hidden=4096), tmp_path / "big.onnx")
    other = onnx_models.save(onnx_models.matmul_net(features=32), tmp_path / "other.onnx")   # wants x [N, 32]
    device = local_cpu(SessionConfig(intra_op_threads=1))
    x = {"x": np.ones((1, 64), np.float32)}
    choice = choose_fastest({"other": other, "big": big, "small": small}, device, x, budget_s=0.5)
    assert choice.chosen == "small" and set(choice.dropped) == {"other"} and "other dropped" in choice.describe()
    none_runs = choose_fastest({"a": other, "b": other}, device, x)
    assert none_runs.chosen == "a" and none_runs.why_untimed.startswith("no alternative runs")


class _ScriptedDevice:
    """Latency by (model, scenario): the scenario is the feeds' ``x`` value. Tests the choice rule
    exactly, which real timings of models whose cost depends on the input cannot."""

    def __init__(self, ms: dict[tuple[str, int], float]) -> None:
        self.ms = ms

    def time_interleaved(self, paths, feeds, *, warmup, runs):
        from types import SimpleNamespace as NS

        scenario = int(feeds["x"].flat[0])
        return NS(models=[NS(stats=NS(p50=self.ms[Path(p).stem, scenario],
                                      samples_ms=[self.ms[Path(p).stem, scenario]] * runs)) for p in paths])


def test_robust_choice_keeps_the_alternative_never_far_behind(tmp_path: Path) -> None:
    """Without real inputs: a is fastest unpadded but 3x behind padded, c the reverse; b is within
    10% of the best in both, so b is kept (minimax regret), and the note gives every scenario."""
    ms = {("a", 0): 10.0, ("b", 0): 10.5, ("c", 0): 30.0, ("a", 1): 30.0, ("b", 1): 11.0, ("c", 1): 10.0}
    paths = {n: tmp_path / f"{n}.onnx" for n in "abc"}
    device = _ScriptedDevice(ms)
    scenarios = {"all attend": {"x": np.zeros(1)}, "half padded": {"x": np.ones(1)}}
    choice = choose_robust(paths, device, scenarios, budget_s=0.5)
    assert choice.chosen == "b" and choice.worst_slowdown == pytest.approx({"a": 3.0, "b": 1.1, "c": 3.0})
    assert choice.scenarios["half padded"]["c"] == 10.0
    assert "kept b, at most 10% slower than the fastest in any scenario" in choice.describe()
    assert choose_fastest(paths, device, scenarios["all attend"], budget_s=0.5).chosen == "a"


def test_dynamic_quantize_without_data_times_padded_masks_too(tmp_path: Path) -> None:
    src = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    res = quantize_model(src, tmp_path / "bert.dyn.onnx", make_config("dynamic", HOST, fuse_transformer=False))
    note = next(n for n in res.notes if n.startswith("transformer encoder:"))
    assert "2 input scenarios" in note and "half padded: " in note and "all attend: " in note
    assert "slower than the fastest in any scenario" in note


def test_dynamic_quantize_times_fused_and_unfused_and_keeps_one(tmp_path: Path) -> None:
    src = onnx_models.save(onnx_models.bert_layers(heads_in_shape=False), tmp_path / "bert.onnx")
    res = quantize_model(src, tmp_path / "bert.dyn.onnx", make_config("dynamic", HOST))
    note = next(n for n in res.notes if n.startswith("transformer encoder:"))
    if note.rsplit("; kept ", 1)[1].startswith("fused"):   # the note is the kept alternative's passes
        assert "num_heads=4, hidden_size=32 read from the graph" in note
    for alternative in ("fused ", "fused+Add/LayerNorm ", "unfused ", "unfused+Add/LayerNorm "):
        assert alternative in note
    assert "quick timing" in note and "; kept " in note
    feeds = _feeds()
    ref, got = _run(src, feeds), _run(tmp_path / "bert.dyn.onnx", feeds)
    assert float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99

    only = quantize_model(src, tmp_path / "bert.unfused.onnx", make_config("dynamic", HOST, fuse_transformer=False))
    note = next(n for n in only.notes if n.startswith("transformer encoder:"))
    assert "unfused " in note and " fused " not in note and "fuse_transformer(" not in note


def test_run_and_tune_time_fused_and_unfused_as_candidates() -> None:
    from edgequant.pipeline import default_variants
    from edgequant.tune.recipes import default_recipes

    bert = onnx_models.bert_layers()
    variants = dict(default_variants("x86-vnni", bert))
    assert variants["dynamic"].fuse_transformer is True and variants["dynamic-unfused"].fuse_transformer is False
    assert [r.name for r in default_recipes("x86-vnni", bert)] == ["dynamic", "dynamic-unfused", "static"]
    assert default_recipes("x86-vnni", bert)[1].config("x86-vnni").fuse_transformer is False
    assert [n for n, _ in default_variants("x86-vnni", onnx_models.matmul_net())] == [
        "dynamic", "dynamic-per-tensor", "static"]   # an MLP, not a transformer
