"""Session tuning: measured deployment defaults are valid SessionConfigs; the tuner keeps the default
unless a setting is faster outside the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.devices import CpuDevice, local_cpu
from edgequant.measure.latency import bench_result
from edgequant.measure.session import SessionConfig
from edgequant.tune.session_settings import (
    MEASURED_WINNERS,
    deployment_session_config,
    tune_session,
)


@pytest.mark.parametrize("kind", sorted(MEASURED_WINNERS))
def test_deployment_config_builds_a_session(kind: str, tmp_path: Path) -> None:
    cfg = SessionConfig(**deployment_session_config(kind))
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4))], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    y = local_cpu(cfg).open(tmp_path / "m.onnx").run(None, {"x": np.ones((1, 4), np.float32)})[0]
    assert np.allclose(y, 4.0)


def test_deployment_config_threads_override_and_unknown_kind() -> None:
    assert deployment_session_config("cnn-int8", threads=2)["intra_op_threads"] == 2
    assert deployment_session_config("cnn-int8")["graph_optimization"] == "all"
    shared = deployment_session_config("cnn-fp32", shared_cores=True)
    assert shared["intra_op_threads"] == 1 and shared["allow_spinning"] is False
    piped = deployment_session_config("transformer-int8", pipeline=True)
    assert piped["config_entries"] == {"session.force_spinning_stop": "1"} and "allow_spinning" not in piped
    assert "allow_spinning" not in deployment_session_config("cnn-int8")
    with pytest.raises(ValueError, match="unknown model kind"):
        deployment_session_config("gpu")


def _matmul(tmp_path: Path) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (8, 64))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (8, 64))], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx"


def test_tune_session_identical_settings_keep_default(tmp_path: Path) -> None:
    feeds = {"x": np.ones((8, 64), np.float32)}
    # "same" is the default under another name: it can't win by more than 1.5x outside noise
    r = tune_session(_matmul(tmp_path), feeds, candidates={"same": {}}, threads=(1, 2), rounds=20, min_gain=1.5)
    assert {t.name for t in r.timings} == {"default@1T", "same@1T", "default@2T", "same@2T"}
    assert r.best in {"default@1T", "default@2T"}
    assert SessionConfig.from_dict(r.best_config).intra_op_threads in (1, 2)
    assert r.to_dict()["timings"][0]["median_ms"] > 0
    assert all(t.speedup.ci_low <= t.speedup.ratio <= t.speedup.ci_high for t in r.timings)


class ScriptedCpu(CpuDevice):
    """Latency by session setting (``ms(config)``), 1% jitter shared by a round; records the jobs."""

    def __init__(self, ms) -> None:
        super().__init__()
        self.ms = ms
        self.jobs: list[list[SessionConfig]] = []

    def time_interleaved(self, model_paths, feeds, *, warmup=10, runs=100, seed=0, confidence=0.95,
                         resamples=1000, sessions=None):
        self.jobs.append(list(sessions))
        jitter = 1.0 + 0.01 * np.random.default_rng(seed).standard_normal(runs)
        times = np.array([self.ms(c) * jitter for c in sessions])
        return bench_result([str(p) for p in model_paths], times, sessions[0], warmup=warmup, runs=runs, wall_s=0.0)


def test_tune_session_picks_a_setting_faster_outside_the_noise(tmp_path: Path) -> None:
    # spinning off: 1.25x at 2 threads, nothing at 1; 2 threads 1.6x faster than 1
    def ms(c: SessionConfig) -> float:
        t = 1.0 if c.intra_op_threads == 1 else 1 / 1.6
        return t / 1.25 if c.intra_op_threads == 2 and c.allow_spinning is False else t

    dev = ScriptedCpu(ms)
    r = tune_session(tmp_path / "m.onnx", {}, candidates={"no_spinning": {"allow_spinning": False}},
                     threads=(2, 1), rounds=30, device=dev)
    # one job per thread count (default first), then the head-to-head of defaults and winners
    assert [[(c.intra_op_threads, c.allow_spinning) for c in job] for job in dev.jobs] == [
        [(1, None), (1, False)], [(2, None), (2, False)], [(1, None), (2, None), (2, False)]]
    assert r.best == "no_spinning@2T" and SessionConfig.from_dict(r.best_config).allow_spinning is False
    by = {t.name: t for t in r.timings}
    assert by["no_spinning@1T"].speedup.ratio == pytest.approx(1.0, abs=0.01)
    assert not by["no_spinning@1T"].speedup.accepts(1.02)
    # within-count ratios rescaled to default@1T through the final group
    assert by["default@2T"].speedup.ratio == pytest.approx(1.6, rel=0.01)
    assert by["no_spinning@2T"].speedup.ratio == pytest.approx(2.0, rel=0.01)
    assert r.final["no_spinning@2T"]["speedup"] == pytest.approx(2.0, rel=0.01)
    entry = r.to_dict()["timings"][0]
    assert set(entry) == {"name", "config", "median_ms", "p90_ms", "speedup", "ci95"}
    assert isinstance(entry["speedup"], float) and len(entry["ci95"]) == 2


def test_tune_session_below_min_gain_keeps_default(tmp_path: Path) -> None:
    dev = ScriptedCpu(lambda c: 1.0 / 1.01 if c.allow_spinning is False else 1.0)   # 1% faster: too little
    r = tune_session(tmp_path / "m.onnx", {}, candidates={"no_spinning": {"allow_spinning": False}},
                     threads=(1,), rounds=30, device=dev)
    assert len(dev.jobs) == 1 and r.best == "default@1T" and r.final == {}
