"""Peak memory measured in fresh subprocesses (the CPU device's memory job)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import big_table, mlp  # noqa: E402

from edgequant.errors import EdgequantError
from edgequant.devices.cpu import CpuDevice

baseline_rss_mb = CpuDevice().baseline_memory
measure_memory = CpuDevice().peak_memory


def test_bigger_model_bigger_delta(tmp_path: Path) -> None:
    small = big_table(tmp_path / "small.onnx", 1)
    big = big_table(tmp_path / "big.onnx", 128)
    feeds = {"idx": np.array([3], np.int64)}
    base = baseline_rss_mb()
    assert base > 0
    m_small = measure_memory(small, feeds, warmup=1, runs=2, baseline_mb=base)
    m_big = measure_memory(big, feeds, warmup=1, runs=2, baseline_mb=base)
    assert m_small.peak_rss_mb > 0 and m_small.baseline_rss_mb == base
    assert m_small.delta_mb == pytest.approx(m_small.peak_rss_mb - base)
    assert m_big.delta_mb > m_small.delta_mb + 100  # the 128 MiB table is resident at least once
    assert set(m_big.to_dict()) == {"peak_rss_mb", "baseline_rss_mb", "delta_mb"}


def test_child_failure_names_model(tmp_path: Path) -> None:
    model = mlp(tmp_path / "m.onnx")
    with pytest.raises(EdgequantError, match=r"m\.onnx: memory probe failed: .*"):
        measure_memory(model, {"x": np.ones((1, 3), np.float32)}, warmup=0, runs=1, baseline_mb=1.0)
    with pytest.raises(EdgequantError, match="no such file"):
        measure_memory(tmp_path / "none.onnx", {}, baseline_mb=1.0)
