"""Workers use the CPUs they were given: sessions left at "ORT decides" take the allowance.

onnxruntime's default pool pins one spinning thread per core; two worker processes sharing the
cores then wait on each other's spinning threads (2x slower each, measured on 2 cores)."""

from __future__ import annotations

import os

import pytest

from edgequant.jobs import quantize_batch
from edgequant.measure.session import (CPUS_ENV, SessionConfig, available_cpus, cpu_allowance, effective_threads,
                                       session_options)


def test_sessions_follow_the_allowance_and_explicit_threads_win(monkeypatch) -> None:
    monkeypatch.delenv(CPUS_ENV, raising=False)
    assert cpu_allowance() is None
    assert session_options(SessionConfig()).intra_op_num_threads == 0          # ORT decides
    monkeypatch.setenv(CPUS_ENV, "1")
    assert cpu_allowance() == 1 and available_cpus() == 1
    assert session_options(SessionConfig()).intra_op_num_threads == 1
    assert session_options(SessionConfig()).inter_op_num_threads == 1
    assert effective_threads(SessionConfig()) == 1
    assert session_options(SessionConfig(intra_op_threads=3)).intra_op_num_threads == 3   # asked for: kept
    monkeypatch.setenv(CPUS_ENV, "many")                                                   # not a count: ignored
    assert cpu_allowance() is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity")
def test_pool_workers_get_their_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.delenv(CPUS_ENV, raising=False)
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    # os.getenv stands in for the job function: it runs in each spawned worker
    assert quantize_batch([CPUS_ENV, CPUS_ENV], 2, fn=os.getenv) == [share, share]


def test_memory_probes_run_side_by_side_up_to_the_allowance(tmp_path, monkeypatch) -> None:
    """Peak RSS is per process: probes may run at once, one per CPU this process may use."""
    import threading
    import time

    import numpy as np

    import onnx_models
    from edgequant.devices import cpu_memory, local_cpu
    from edgequant.measure.memory import MemoryResult

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.onnx")
        onnx_models.save(onnx_models.matmul_net(), paths[-1])
    running, most, lock = [0], [0], threading.Lock()

    def fake_probe(path, feeds, cfg=None, *, warmup, runs, baseline_mb):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return MemoryResult(peak_rss_mb=float(len(str(path))), baseline_rss_mb=baseline_mb, delta_mb=0.0)

    monkeypatch.setattr(cpu_memory, "measure_memory", fake_probe)
    feeds = {"x": np.zeros((1, 64), np.float32)}
    for cpus, expected in (("2", 2), ("1", 1)):
        monkeypatch.setenv(CPUS_ENV, cpus)
        most[0] = 0
        got = local_cpu().peak_memories(paths, feeds, runs=1, baseline_mb=10.0)
        assert [g.peak_rss_mb for g in got] == [float(len(str(p))) for p in paths]    # in the models' order
        assert most[0] == expected
