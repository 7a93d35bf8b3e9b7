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
