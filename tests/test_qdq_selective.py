"""Selective INT8: decision logic (with a deterministic fake profiler/timer or device) and the Q/DQ post-pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.devices import CpuDevice, local_cpu
from edgequant.measure.latency import LatencyStats, ModelTiming, Speedup, bench_result
from edgequant.measure.session import SessionConfig
from edgequant.qdq.selective import (
    CostModel,
    analyse,
    apply_float_nodes,
    quantize_selective,
    sandwiched,
    search_float_nodes,
)
from edgequant.rewrites import decompose_prelu


def optimized_graph(path: Path, level: str) -> onnx.ModelProto:
    return local_cpu().optimized_graph(path, level)

RNG = np.random.default_rng(0)
SHAPE = (1, 8, 16, 16)


def _conv(name: str, x: str, cin: int, cout: int, k: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array((RNG.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32), f"{name}_W")
    b = numpy_helper.from_array((RNG.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_B")
    node = helper.make_node("Conv", [x, w.name, b.name], [name], name=name, pads=[k // 2] * 4)
    return node, [w, b]


def _model(path: Path, with_prelu: bool) -> Path:
    """x -> A (3x3) -> [PRelu] -> B (1x1, 8->16) -> C (1x1) -> y."""
    nodes, inits = [], []
    a, i = _conv("A", "x", 8, 8, 3)
    nodes.append(a)
    inits += i
    prev = "A"
    if with_prelu:
        alpha = numpy_helper.from_array(RNG.uniform(-0.5, 0.9, (8, 1, 1)).astype(np.float32), "alpha")
        nodes.append(helper.make_node("PRelu", ["A", "alpha"], ["P"], name="P"))
        inits.append(alpha)
        prev = "P"
    b, i = _conv("B", prev, 8, 16, 1)
    nodes.append(b)
    inits += i
    c, i = _conv("C", "B", 16, 16, 1)
    nodes.append(c)
    inits += i
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [helper.make_tensor_value_info("C", TensorProto.FLOAT, (1, 16, 16, 16))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


class Reader:
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self._it = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self._it, None)


FEEDS = {"x": np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)}


def fake_profiler(path: Path) -> dict[str, float]:
    """FP32: every conv 100 us; INT8: A (the 'stem') is slower (300 us), B and C much faster (20 us)."""
    m = onnx.load(str(path))
    quantized = any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    out = {"P": 30.0} if any(n.name == "P" for n in m.graph.node) else {}
    if not quantized:
        return {**out, "A_nchwc": 100.0, "B_nchwc": 100.0, "C_nchwc": 100.0, "ReorderInput": 5.0}
    return {**out, "A_token_1": 300.0, "B_token_2": 20.0, "C_token_3": 20.0, "x_QuantizeLinear": 10.0,
            "A_DequantizeLinear": 10.0, "P_QuantizeLinear": 10.0, "C_DequantizeLinear": 10.0}


def timing(path: Path, speedup: float, half_width: float) -> ModelTiming:
    """A timed model: median 1/speedup ms, speedup interval ``speedup +- half_width``."""
    return ModelTiming(str(path), LatencyStats.from_samples([1.0 / speedup] * 3),
                       Speedup(speedup, speedup - half_width, speedup + half_width, 0.95, 1000))


def timer_from(speedups: dict[str, float]):
    def timer(paths: dict[str, Path], rounds: int) -> dict[str, ModelTiming]:
        return {name: timing(p, speedups.get(name, 0.9) if name != "fp32" else 1.0, 0.02) for name, p in paths.items()}
    return timer


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _run(path: Path) -> np.ndarray:
    return local_cpu().open(path).run(None, FEEDS)[0]


def test_decision_keeps_int8_where_it_pays_and_float_where_it_does_not(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx", with_prelu=True)
    out = tmp_path / "sel.onnx"
    s = quantize_selective(src, out, Reader, feeds=FEEDS, profiler=fake_profiler,
                           timer=timer_from({"int8_full": 0.9, "selective": 1.4, "selective_islands": 1.3}))
    assert s.found and s.chosen == "selective"
    assert s.float_nodes == ["A"]
    # prepare() rewrites PRelu exactly as Relu/Sub/Mul/Add; ORT fuses its Relu, Mul and Add to INT8
    assert s.int8_nodes == ["B", "C", "P__add", "P__mul", "P__relu"]
    ops = {n.name: n.op_type for n in optimized_graph(out, "extended").graph.node}
    assert ops["A"] == "Conv"                      # really float in the graph ORT runs
    assert ops["B"] == "QLinearConv" and ops["C"] == "QLinearConv"
    onnx.checker.check_model(onnx.load(str(out)))
    assert _cosine(_run(out), _run(src)) > 0.99


def test_no_faster_model_reports_why_and_writes_nothing(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx", with_prelu=True)
    out = tmp_path / "sel.onnx"
    s = quantize_selective(src, out, Reader, feeds=FEEDS, profiler=fake_profiler,
                           timer=timer_from({"int8_full": 0.8, "selective": 0.97, "selective_islands": 0.95}))
    assert not s.found and s.chosen == "fp32"
    assert s.reason.startswith("no faster INT8 model found")
    assert not out.exists()
    assert {r["node"] for r in s.node_table} == {"A", "B", "C", "P__add", "P__mul", "P__relu"}


def test_float_region_between_int8_convs_is_not_requantized(tmp_path: Path) -> None:
    """The nodes_to_exclude trap: B alone can't stay float (DQ in, Q out); B+C as a region can."""
    from edgequant.qdq import quantize_static_optimized

    src = _model(tmp_path / "m.onnx", with_prelu=False)
    full = tmp_path / "full.onnx"
    quantize_static_optimized(src, full, Reader(), reduce_range=True)
    q = onnx.load(str(full))
    plan = analyse(q, optimized_graph(full, "extended"))
    assert set(plan.units) == {"A", "B", "C"}
    assert sandwiched(plan, {"B"}) == ["B"]
    assert sandwiched(plan, {"B", "C"}) == []
    sel = tmp_path / "bc.onnx"
    onnx.save(apply_float_nodes(q, {"B", "C"}, onnx.load(str(src)), units=plan.units), str(sel))
    ops = {n.name: n.op_type for n in optimized_graph(sel, "extended").graph.node}
    assert ops["A"] == "QLinearConv" and ops["B"] == "Conv" and ops["C"] == "Conv"
    assert _cosine(_run(sel), _run(src)) > 0.99


def test_cost_model_end_points_match_profiles_and_search_is_legal(tmp_path: Path) -> None:
    from edgequant.qdq import quantize_static_optimized

    src = _model(tmp_path / "m.onnx", with_prelu=False)
    full = tmp_path / "full.onnx"
    quantize_static_optimized(src, full, Reader(), reduce_range=True)
    plan = analyse(onnx.load(str(full)), optimized_graph(full, "extended"))
    fp32 = {"A": 100.0, "B": 100.0, "C": 100.0}
    int8 = {"A": 300.0, "B": 20.0, "C": 20.0, "x_QuantizeLinear": 10.0, "C_DequantizeLinear": 10.0}
    numel = {"x": 2048, "A": 2048, "B": 4096, "C": 4096}
    cm = CostModel.fit(plan, fp32, int8, numel)
    assert cm.cost(set()) == pytest.approx(sum(int8.values()))
    assert cm.cost(set(plan.units)) == pytest.approx(sum(fp32.values()))
    f, cost = search_float_nodes(cm)
    assert f == {"A"} and not sandwiched(plan, f)   # A reads the graph input: legal alone
    assert cost < min(cm.cost(set()), cm.cost(set(plan.units)))


def test_winner_must_be_confirmed_in_a_second_ab_run(tmp_path: Path) -> None:
    """The best of several noisy candidates is flattered: a winner that a second run doesn't confirm loses."""
    src = _model(tmp_path / "m.onnx", with_prelu=True)
    calls = []

    def flaky(paths: dict[str, Path], rounds: int) -> dict[str, ModelTiming]:
        calls.append(list(paths))
        lucky = 1.3 if len(calls) == 1 else 1.0
        return {n: timing(p, 1.0 if n == "fp32" else lucky, 0.0 if n == "fp32" else 0.05) for n, p in paths.items()}

    s = quantize_selective(src, tmp_path / "sel.onnx", Reader, feeds=FEEDS, profiler=fake_profiler, timer=flaky)
    assert len(calls) == 2 and calls[1][0] == "fp32" and len(calls[1]) == 2
    assert not s.found and not (tmp_path / "sel.onnx").exists()
    assert any("not confirmed" in w for w in s.warnings)


def test_decompose_prelu_is_exact(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx", with_prelu=True)
    m = onnx.load(str(src))
    assert decompose_prelu(m) == 1
    assert not any(n.op_type == "PRelu" for n in m.graph.node)
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp_path / "d.onnx"))
    np.testing.assert_allclose(_run(tmp_path / "d.onnx"), _run(src), rtol=1e-6, atol=1e-5)


def test_speedup_inside_the_noise_is_not_accepted(tmp_path: Path) -> None:
    """1.4x is not enough when the interval reaches below 1 (``Speedup.accepts``)."""
    src = _model(tmp_path / "m.onnx", with_prelu=True)

    def noisy(paths: dict[str, Path], rounds: int) -> dict[str, ModelTiming]:
        return {n: timing(p, 1.0 if n == "fp32" else 1.4, 0.0 if n == "fp32" else 0.45) for n, p in paths.items()}

    s = quantize_selective(src, tmp_path / "sel.onnx", Reader, feeds=FEEDS, profiler=fake_profiler, timer=noisy)
    assert not s.found and not (tmp_path / "sel.onnx").exists()
    assert all("confirmation" not in c for c in s.candidates)


class ScriptedCpu(CpuDevice):
    """The CPU device with scripted profiles and latencies, recording the jobs it was given."""

    MS = {"m.onnx": 1.0, "int8_full.onnx": 1.2, "selective.onnx": 0.7, "selective_islands.onnx": 0.8}

    def __init__(self) -> None:
        super().__init__(SessionConfig(intra_op_threads=1))
        self.profiled: list[tuple[str, int | None]] = []
        self.timed: list[tuple[list[str], int, int]] = []

    def profile_nodes(self, model_path, feeds, *, warmup=5, runs=None, seconds=3.0):
        self.profiled.append((Path(model_path).name, runs))
        return fake_profiler(Path(model_path))

    def time_interleaved(self, model_paths, feeds, *, warmup=10, runs=100, seed=0, confidence=0.95,
                         resamples=1000, sessions=None):
        names = [Path(p).name for p in model_paths]
        self.timed.append((names, runs, warmup))
        jitter = 1.0 + 0.01 * np.random.default_rng(seed).standard_normal(runs)   # shared per round
        times = np.array([self.MS[n] * jitter for n in names])
        return bench_result([str(p) for p in model_paths], times, self.session, warmup=warmup, runs=runs, wall_s=0.0)


def test_measurements_go_through_the_device_and_base_options_pass_through(tmp_path: Path, monkeypatch) -> None:
    import edgequant.qdq.recipe as recipe

    seen: dict = {}
    real = recipe.quantize_static_optimized

    def spy(model_in, model_out, reader, **kwargs):
        seen.update(kwargs)
        return real(model_in, model_out, reader, **kwargs)

    monkeypatch.setattr(recipe, "quantize_static_optimized", spy)
    src = _model(tmp_path / "m.onnx", with_prelu=True)
    out = tmp_path / "sel.onnx"
    dev = ScriptedCpu()
    s = quantize_selective(src, out, Reader, feeds=FEEDS, device=dev, rounds=12, profile_runs=7,
                           base_options={"activations_to_uint8": True, "target": "x86-avx2"})
    assert seen["activations_to_uint8"] is True and seen["target"] == "x86-avx2" and seen["reduce_range"] is True
    assert seen["device"] is dev
    assert any(p.startswith("activations_s8_to_u8") for p in s.base["passes"])
    assert dev.profiled == [("m.onnx", 7), ("int8_full.onnx", 7)]
    # one interleaved job over every candidate (FP32 first), then the winner alone against FP32
    assert dev.timed[0] == (["m.onnx", "int8_full.onnx", "selective.onnx"], 12, 5)
    assert dev.timed[1][0] == ["m.onnx", "selective.onnx"]
    assert s.found and s.chosen == "selective" and out.exists()
    by_name = {c["name"]: c for c in s.candidates}
    sel = by_name["selective"]
    assert sel["speedup"] == pytest.approx(1 / 0.7, rel=0.02) and sel["ci95_low"] > 1.0 and sel["rounds"] == 12
    assert sel["median_ms"] == pytest.approx(0.7, rel=0.05)
    assert sel["confirmation"]["speedup"] == pytest.approx(1 / 0.7, rel=0.02)
    assert by_name["int8_full"]["ci95_high"] < 1.0
