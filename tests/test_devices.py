"""The device interface on the local CPU: facts, streamed outputs, interleaved jobs, listing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.devices import CpuDevice, get_device, list_devices
from edgequant.errors import EdgequantError
from edgequant.measure.session import SessionConfig


def test_cpu_facts_and_registry() -> None:
    facts = get_device("cpu").facts()
    assert facts.available and facts.can_time and not facts.emulated and facts.kind == "cpu"
    assert facts.report_entry() == {"name": "cpu", "kind": "cpu", "emulated": False}
    assert [f.name for f in list_devices()][:2] == ["cpu", "qnn-htp"]
    with pytest.raises(EdgequantError, match="unknown device 'npu0'.*cpu"):
        get_device("npu0")


def test_iter_outputs_streams_and_restricts_outputs(tmp_path: Path) -> None:
    a = mlp(tmp_path / "a.onnx", classes=4, seed=0)
    b = mlp(tmp_path / "b.onnx", classes=4, seed=1)
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(3)]
    consumed = []

    def samples():
        for x in xs:
            consumed.append(1)
            yield {"x": x}

    stream = CpuDevice().iter_outputs([a, b], samples(), outputs=[["y"], ["y"]])
    (first_a, first_b), label = next(stream)
    assert len(consumed) == 1 and label is None          # one sample in flight, not the whole set
    assert set(first_a) == {"y"} and not np.allclose(first_a["y"], first_b["y"])
    assert sum(1 for _ in stream) == 2


def test_time_interleaved_with_a_session_per_entry(tmp_path: Path) -> None:
    m = mlp(tmp_path / "m.onnx", width=64)
    feeds = {"x": np.ones((1, 64), np.float32)}
    res = CpuDevice().time_interleaved([m, m], feeds, warmup=1, runs=5,
                                       sessions=[SessionConfig(intra_op_threads=1), SessionConfig(intra_op_threads=2)])
    assert len(res.models) == 2 and res.models[0].speedup.ratio == 1.0 and len(res.models[1].stats.samples_ms) == 5
    with pytest.raises(EdgequantError, match="1 session settings for 2 models"):
        CpuDevice().time_interleaved([m, m], feeds, warmup=0, runs=3, sessions=[SessionConfig()])


def test_sessions_taking_turns_stop_spinning_between_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interleaved sessions must not leave workers spinning on the cores the next one is timed on;
    a model timed alone keeps onnxruntime's default, and a value the user set is kept."""
    from edgequant.devices import cpu

    opened: list[SessionConfig] = []
    real_open = cpu.open_session
    monkeypatch.setattr(cpu, "open_session", lambda path, cfg: opened.append(cfg) or real_open(path, cfg))
    m = mlp(tmp_path / "m.onnx", width=64)
    feeds = {"x": np.ones((1, 64), np.float32)}
    key = "session.force_spinning_stop"
    CpuDevice(SessionConfig(intra_op_threads=2)).time_interleaved([m, m], feeds, warmup=1, runs=3)
    assert [c.config_entries.get(key) for c in opened] == ["1", "1"]
    opened.clear()
    CpuDevice(SessionConfig(intra_op_threads=2)).time_interleaved([m], feeds, warmup=1, runs=3)
    assert [c.config_entries.get(key) for c in opened] == [None]
    opened.clear()
    CpuDevice(SessionConfig(intra_op_threads=2, config_entries={key: "0"})).time_interleaved(
        [m, m], feeds, warmup=1, runs=3)
    assert [c.config_entries.get(key) for c in opened] == ["0", "0"]


def test_devices_command_lists_the_contract_keys() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgequant", "devices", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed[0]["name"] == "cpu"
    assert {"name", "kind", "available", "why", "can_time"} <= set(listed[0])
