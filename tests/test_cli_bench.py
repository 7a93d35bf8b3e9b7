"""`edgequant bench` end to end through edgequant.cli.main."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.cli import main

CONTRACT_LATENCY = {"mean", "std", "min", "max", "p50", "p95", "p99"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bench")
    return (mlp(d / "slow.onnx", layers=10, width=128, batch=32),
            mlp(d / "fast.onnx", layers=1, width=128, batch=32))


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bench_json_and_table(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slow, fast = pair
    out = tmp_path / "sub" / "bench.json"
    rc = main(["bench", str(slow), str(fast), "--runs", "15", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "random:1 (default)" in text and "synthetic" in text and "onnxruntime" in text
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgequant.bench/1"
    assert {"cpu", "isa", "onnxruntime", "threads"} <= set(doc["machine"]) and doc["machine"]["threads"] == 1
    assert doc["input"] == {"spec": "random:1", "default": True, "synthetic": True, "notes": []}
    assert [m["name"] for m in doc["models"]] == ["slow.onnx", "fast.onnx"]
    first, second = doc["models"]
    # --runs is a minimum: these sub-millisecond models get more rounds until they fill --min-time (0.5 s)
    assert doc["runs"] >= 15 and len(first["samples_ms"]) == len(second["samples_ms"]) == doc["runs"]
    assert set(first["latency_ms"]) == CONTRACT_LATENCY
    assert first["speedup"] == 1.0 and second["speedup"] > 1.0 and second["faster_than_noise"]
    assert second["speedup_ci"][0] > 1.0
    assert first["peak_memory_mb"] > 0 and doc["memory"]["baseline_rss_mb"] > 0
    assert second["memory_delta_mb"] == pytest.approx(second["peak_memory_mb"] - doc["memory"]["baseline_rss_mb"])
    assert doc["threads_sweep"] is None
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temp file left behind


def test_bench_sweep_and_session_flags(pair: tuple[Path, Path], tmp_path: Path) -> None:
    slow, _ = pair
    out = tmp_path / "b.json"
    rc = main(["bench", str(slow), "--runs", "3", "--warmup", "0", "--threads-sweep", "1,2", "--no-memory",
               "--graph-opt", "basic", "--no-mem-arena", "--no-spinning", "--provider", "CPUExecutionProvider",
               "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [b["threads"] for b in doc["threads_sweep"]] == [1, 2]
    assert doc["session"]["graph_optimization"] == "basic" and doc["session"]["enable_mem_arena"] is False
    assert doc["session"]["allow_spinning"] is False and doc["memory"] is None
    assert doc["models"][0]["peak_memory_mb"] is None


def test_bench_burst_is_recorded_and_said(pair: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    slow, fast = pair
    out = tmp_path / "b.json"
    assert main(["bench", str(slow), str(fast), "--runs", "4", "--warmup", "0", "--burst", "3", "--no-memory",
                 "--min-time", "0", "--json", str(out)]) == 0
    assert "each a burst of 3 runs in a row" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["burst"] == 3 and doc["runs"] == 4 and doc["models"][1]["speedup"] > 1.0
    assert main(["bench", str(slow), "--burst", "0"]) != 0

def test_bench_input_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    slow, fast = pair
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((4, 32, 128), np.float32))
    out = tmp_path / "b.json"
    assert main(["bench", str(slow), str(fast), "--input", str(data), "--runs", "2", "--warmup", "0",
                 "--no-memory", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["input"]["spec"] == str(data) and doc["input"]["synthetic"] is False


def test_bench_missing_model(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    assert main(["bench", str(pair[0]), str(tmp_path / "nope.onnx"), "--json", str(out)]) == 1
    _one_line_error(capsys, "nope.onnx", "no such file")
    assert not out.exists()


def test_bench_corrupt_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    assert main(["bench", str(bad), "--no-memory"]) == 1
    _one_line_error(capsys, "bad.onnx")


def test_bench_bad_provider_and_sweep(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(pair[0]), "--provider", "CUDAExecutionProviderX", "--no-memory"]) == 1
    _one_line_error(capsys, "CUDAExecutionProviderX", "not available")
    assert main(["bench", str(pair[0]), "--threads-sweep", "a,b"]) == 2
    _one_line_error(capsys, "threads-sweep")


def test_bench_input_mismatch(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((4, 32, 7), np.float32))
    assert main(["bench", str(pair[0]), "--input", str(data), "--no-memory"]) == 1
    _one_line_error(capsys, "x.npz")
