"""The float-fallback stage: the fewest nodes out of INT8, found in batches as wide as the workers.

A fake runner stands in for quantization: a group of ``k`` nodes is within budget from
``threshold`` on. What is checked is the search itself, not onnxruntime.
"""

from __future__ import annotations

import pytest

from edgequant.sensitivity import NodeSensitivity, SensitivityReport
from edgequant.tune.recipes import Recipe
from edgequant.tune.search import Search
from edgequant.tune.trials import Trial


def _sens(n: int) -> SensitivityReport:
    nodes = [NodeSensitivity(f"conv{i}", "Conv", 10.0 + i, 30.0, 20.0 - i, None, "weights", (f"y{i}",), (f"conv{i}",))
             for i in range(n)]
    nodes.append(NodeSensitivity("tail", "Conv", 40.0, 40.0, 0.0, None, "inherited", ("y",), ("tail",)))
    return SensitivityReport(nodes=nodes, tensors={}, samples=4, float_model="f.onnx", qdq_model="q.onnx")


class FakeRunner:
    def __init__(self, parallel: int, threshold: int) -> None:
        self.parallel, self.workers, self.threshold = parallel, parallel, threshold
        self.batches: list[list[int]] = []

    def fp32_model(self):
        from onnx import TensorProto, helper

        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm0")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        return helper.make_model(g)

    def run(self, recipes, *, deadline=None):
        self.batches.append([len(r.exclude) for r in recipes])
        trials = []
        for r in recipes:
            t = Trial(r, {})
            t.within_budget = len(r.exclude) >= self.threshold
            trials.append(t)
        return trials


def _search(parallel: int, threshold: int, nodes: int = 12, cap: int = 40) -> tuple[Search, FakeRunner]:
    runner = FakeRunner(parallel, threshold)
    search = Search(runner=runner, target="x86-avx2", analyze=lambda t: None, max_candidates=cap)
    search._fallback(Recipe("static", "static"), _sens(nodes))
    return search, runner


def _fewest(search: Search) -> int:
    return min(len(t.recipe.exclude) for t in search.state.trials if t.within_budget)


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 7, 9, 12])
@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_finds_the_fewest_nodes_whatever_the_batch_width(parallel: int, threshold: int) -> None:
    search, runner = _search(parallel, threshold)
    assert _fewest(search) == threshold
    assert all(len(batch) <= parallel for batch in runner.batches)
    assert all(batch == sorted(batch) for batch in runner.batches)      # smallest first: a cap drops the rest


def test_one_worker_is_the_sequential_search() -> None:
    _search_, runner = _search(1, threshold=5)
    assert runner.batches == [[1], [2], [4], [8], [6], [5]]


def test_two_workers_try_two_sizes_per_batch_in_fewer_rounds() -> None:
    _s1, one = _search(1, threshold=5)
    _s2, two = _search(2, threshold=5)
    assert two.batches[:2] == [[1, 2], [4, 8]]
    assert len(two.batches) < len(one.batches)
    assert any(len(b) == 2 for b in two.batches[2:])                  # the bisection is batched too


def test_the_candidate_cap_still_holds() -> None:
    search, runner = _search(2, threshold=9, cap=3)
    assert len(search.state.trials) <= 3
    assert search.state.stopped and "candidate limit" in search.state.stopped


def test_no_group_that_leaves_every_compute_node_float() -> None:
    # 3 sensitive nodes + the tail: the whole model float never becomes a candidate
    search, runner = _search(2, threshold=99, nodes=3)
    assert all(len(t.recipe.exclude) < 4 for t in search.state.trials)
    assert not any(t.within_budget for t in search.state.trials)


def _default(name: str, mode: str, cosine: float, fuse: bool | None = None) -> Trial:
    return Trial(Recipe(name, mode, fuse_transformer=fuse), {}, fidelity={"cosine": cosine},
                 coverage={"quantized_compute_ops": 6})


RANKED = [(f"mm{i}", 20.0 + i) for i in range(6)]      # input SQNR under dynamic quantization, lowest first


def _dynamic_search(parallel: int, threshold: int, static_cosine: float) -> tuple[Search, FakeRunner]:
    runner = FakeRunner(parallel, threshold)
    search = Search(runner=runner, target="x86-vnni", analyze=lambda t: None, rank_dynamic=lambda: RANKED,
                    max_candidates=40)
    search.state.trials += [_default("dynamic", "dynamic", 0.989, fuse=True),
                            _default("dynamic-unfused", "dynamic", 0.988, fuse=False),
                            _default("static", "static", static_cosine)]
    search.state.sensitivity = _sens(6)
    return search, runner


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_closer_dynamic_default_falls_back_its_worst_quantized_matmuls_first(parallel: int) -> None:
    search, runner = _dynamic_search(parallel, threshold=3, static_cosine=0.33)
    assert search._dynamic_fallback()
    fallback = [t for t in search.state.trials if t.recipe.stage == "fallback"]
    assert fallback and all(t.name.startswith("dynamic-unfused+float") for t in fallback)   # never the fused graph
    assert all(t.recipe.mode == "dynamic" for t in fallback)
    best = min((t for t in fallback if t.within_budget), key=lambda t: len(t.recipe.exclude))
    assert best.recipe.exclude == ("mm0", "mm1", "mm2")       # lowest input SQNR first, no neighbour regions
    assert "dB SQNR" in dict(best.recipe.float_reasons)["mm0"]
    assert max(len(t.recipe.exclude) for t in fallback) < len(RANKED)   # one MatMul always stays INT8
    assert "closest" in search.state.notes[-1]
    smoothed = [t for t in search.state.trials if t.recipe.stage == "algorithms"]
    assert [t.name for t in smoothed] == ["dynamic-unfused+smoothquant", "dynamic-unfused+smoothquant+gptq"]
    assert smoothed[0].recipe.smooth_quant and smoothed[1].recipe.gptq
    assert search.state.trials.index(smoothed[0]) < search.state.trials.index(fallback[0])   # INT8 first


def test_dynamic_smoothquant_within_budget_ends_the_search_before_any_fallback() -> None:
    search, runner = _dynamic_search(1, threshold=0, static_cosine=0.33)   # threshold 0: any trial is in budget
    assert search._dynamic_fallback()
    assert [t.recipe.stage for t in search.state.trials[3:]] == ["algorithms"]
    assert search.state.trials[3].recipe.mode == "dynamic"


def test_static_closer_keeps_the_static_search() -> None:
    search, runner = _dynamic_search(1, threshold=3, static_cosine=0.995)
    assert not search._dynamic_fallback() and not runner.batches
