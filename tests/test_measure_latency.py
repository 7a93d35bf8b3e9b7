"""Latency statistics, interleaving and the paired bootstrap speedup."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.errors import EdgequantError
from edgequant.devices.cpu import CpuDevice
from edgequant.devices.cpu_session import open_session as make_session
from edgequant.measure.latency import MAX_ROUNDS, LatencyStats, paired_speedup, round_order
from edgequant.measure.session import SessionConfig


def benchmark_interleaved(paths, feeds, cfg=None, **kwargs):
    """The CPU device's interleaved timing job (what every benchmark in the product runs)."""
    return CpuDevice(cfg).time_interleaved(paths, feeds, **kwargs)


def test_stats_match_numpy() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    s = LatencyStats.from_samples(x)
    assert s.mean == pytest.approx(4.0)
    assert s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.min, s.max) == (1.0, 10.0)
    assert s.p50 == pytest.approx(3.0)
    assert s.p95 == pytest.approx(8.8)    # linear interpolation: 4 + 0.8 * (10 - 4)
    assert s.p99 == pytest.approx(9.76)
    assert s.throughput_per_s == pytest.approx(250.0)
    assert s.samples_ms == tuple(x)
    assert set(s.to_dict()) == {"mean", "std", "min", "max", "p50", "p95", "p99"}


def test_stats_single_sample_and_empty() -> None:
    assert LatencyStats.from_samples([2.0]).std == 0.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_round_order_is_a_seeded_permutation_that_varies() -> None:
    orders = [round_order(4, r) for r in range(50)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == [round_order(4, r) for r in range(50)]  # reproducible
    assert len({tuple(o) for o in orders}) > 10                # not a fixed rotation
    firsts = {o[0] for o in orders}
    assert firsts == {0, 1, 2, 3}


def test_bootstrap_ci_contains_true_ratio() -> None:
    rng = np.random.default_rng(1)
    rounds = 200
    shared = rng.lognormal(0.0, 0.3, rounds)            # machine-wide noise, common to a round
    fast = 1.0 * shared * rng.lognormal(0.0, 0.05, rounds)
    slow = 2.5 * shared * rng.lognormal(0.0, 0.05, rounds)
    sp = paired_speedup(slow, fast, resamples=1000, seed=0)   # reference = slow: fast is ~2.5x
    assert sp.ci_low <= 2.5 <= sp.ci_high
    assert sp.ratio == pytest.approx(np.median(slow) / np.median(fast))
    assert sp.faster_than_noise and not sp.slower_than_noise
    same = paired_speedup(fast, fast * rng.lognormal(0.0, 0.05, rounds))
    assert same.ci_low < 1.0 < same.ci_high and not same.faster_than_noise


def test_bootstrap_is_seeded() -> None:
    a, b = np.arange(1.0, 51.0), np.arange(2.0, 52.0)
    assert paired_speedup(a, b, seed=3) == paired_speedup(a, b, seed=3)
    with pytest.raises(ValueError):
        paired_speedup(a, b[:-1])


def test_interleaved_ratio_direction(tmp_path: Path) -> None:
    fast = mlp(tmp_path / "fast.onnx", layers=1, width=256, batch=64)
    slow = mlp(tmp_path / "slow.onnx", layers=10, width=256, batch=64)
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)}
    res = benchmark_interleaved([slow, fast], feeds, SessionConfig(intra_op_threads=1), warmup=2, runs=25)
    first, second = res.models
    assert first.speedup.ratio == 1.0
    assert second.speedup.ratio > 1.0 and second.speedup.faster_than_noise
    assert second.stats.p50 < first.stats.p50
    assert len(second.stats.samples_ms) == 25
    d = res.to_dict()
    assert d["models"][1]["speedup"]["faster_than_noise"] is True
    assert d["config"]["intra_op_threads"] == 1
    # the reverse order gives a ratio below 1 whose CI excludes 1 from above
    rev = benchmark_interleaved([fast, slow], feeds, SessionConfig(intra_op_threads=1), warmup=1, runs=25)
    assert rev.models[1].speedup.slower_than_noise


def test_fast_models_get_more_rounds_and_tighter_intervals(tmp_path: Path) -> None:
    """A sub-millisecond model times more rounds than asked, until they fill ``min_seconds``;
    every model gets the same rounds (paired), and without a minimum the count is exact."""
    a = mlp(tmp_path / "a.onnx", layers=1, width=16, batch=1)
    b = mlp(tmp_path / "b.onnx", layers=2, width=16, batch=1)
    feeds = {"x": np.ones((1, 16), np.float32)}
    cfg = SessionConfig(intra_op_threads=1)
    exact = benchmark_interleaved([a, b], feeds, cfg, warmup=3, runs=10)
    assert exact.runs == 10 and len(exact.models[1].stats.samples_ms) == 10
    more = benchmark_interleaved([a, b], feeds, cfg, warmup=3, runs=10, min_seconds=0.2)
    assert 10 < more.runs <= MAX_ROUNDS
    assert all(len(m.stats.samples_ms) == more.runs for m in more.models)
    timed_s = sum(float(np.sum(m.stats.samples_ms)) for m in more.models) / 1e3
    assert more.runs == MAX_ROUNDS or timed_s >= 0.2     # filled the 0.2 s, or stopped at the cap
    slow = benchmark_interleaved([a, b], feeds, cfg, warmup=1, runs=10, min_seconds=1e-6)
    assert slow.runs == 10                               # already long enough: exactly the rounds asked


def test_feeds_forms(tmp_path: Path) -> None:
    a = mlp(tmp_path / "a.onnx")
    b = mlp(tmp_path / "b.onnx", input_name="z")
    x = np.ones((1, 16), np.float32)
    by_path = {str(a): {"x": x}, str(b): {"z": x}}
    res = benchmark_interleaved([a, b], by_path, warmup=0, runs=3)
    assert len(res.models) == 2
    res = benchmark_interleaved([a, b], [{"x": x}, {"z": x}], warmup=0, runs=3)   # one per model, in order
    assert res.models[1].path == str(b)
    with pytest.raises(EdgequantError, match="2 models"):
        benchmark_interleaved([a, b], [{"x": x}], warmup=0, runs=3)
    res = benchmark_interleaved([a, b], lambda path, specs: {s.name: x for s in specs}, warmup=0, runs=3)
    assert res.runs == 3
    with pytest.raises(EdgequantError, match="inputs do not match"):
        benchmark_interleaved([a, b], {"x": x}, warmup=0, runs=3)
    with pytest.raises(EdgequantError, match="inputs do not match"):
        benchmark_interleaved([a], {"x": np.ones((1, 3), np.float32)}, warmup=0, runs=3)


def test_session_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(EdgequantError, match="no such file"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(EdgequantError, match=r"bad\.onnx: onnxruntime cannot load"):
        make_session(bad)
    with pytest.raises(EdgequantError, match="NoSuchExecutionProvider"):
        make_session(mlp(tmp_path / "m.onnx"), SessionConfig(providers=("NoSuchExecutionProvider",)))
    with pytest.raises(EdgequantError, match="graph optimization"):
        SessionConfig(graph_optimization="max")


def test_session_config_roundtrip() -> None:
    cfg = SessionConfig(intra_op_threads=2, allow_spinning=False, graph_optimization="basic",
                        config_entries={"session.x": 1})
    assert SessionConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["config_entries"] == {"session.x": "1"}


def test_burst_times_a_model_after_itself_not_after_the_other(monkeypatch) -> None:
    """Some CPUs run the first INT8 inference after other work 1-2 ms slower (benchmarks/duty_cycle.py):
    once per round times every run right after another model's; a burst drops that first run and
    times the steady state, still paired round by round. Sessions here sleep 5 ms on a run that
    follows another model's and 1 ms otherwise."""
    import time

    import edgequant.devices.cpu as cpu_mod
    from edgequant.measure.latency import check_run_counts

    last: list[str] = [""]

    class Switching:
        def __init__(self, path: str) -> None:
            self.path = path

        def run(self, _outputs, _feeds):
            time.sleep(0.005 if last[0] != self.path else 0.001)
            last[0] = self.path
            return []

    monkeypatch.setattr(cpu_mod, "open_session", lambda path, cfg: Switching(path))
    monkeypatch.setattr(cpu_mod, "resolve_feeds", lambda feeds, paths, inputs: [{} for _ in paths])
    monkeypatch.setattr(cpu_mod, "session_inputs", lambda sess: [])
    device = CpuDevice(SessionConfig(intra_op_threads=1))
    once = device.time_interleaved(["a.onnx", "b.onnx"], {}, warmup=0, runs=6)
    burst = device.time_interleaved(["a.onnx", "b.onnx"], {}, warmup=0, runs=6, burst=4)
    assert once.burst == 1 and burst.burst == 4 and burst.to_dict()["burst"] == 4
    assert all(m.stats.p50 > 4.5 for m in once.models)           # every run followed the other model
    assert all(m.stats.p50 < 3.0 for m in burst.models)          # the steady state, after itself
    assert len(burst.models[1].stats.samples_ms) == 6            # one time per round: still paired
    with pytest.raises(EdgequantError, match="--burst"):
        check_run_counts(1, 10, 0)
