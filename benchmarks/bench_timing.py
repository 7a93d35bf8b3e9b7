"""Interleaved latency measurement: A B C, B C A, ... in one process, with paired bootstrap CIs.

Interleaving spreads slow drifts (thermal, other processes on a shared 2-core box) over all
variants alike; pairing each round's FP32 time with the same round's candidate time makes
the speedup CI reflect the noise the comparison actually saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


def make_session(path: str, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


@dataclass
class Timing:
    name: str
    samples_ms: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    def summary(self) -> dict[str, float]:
        s = self.samples_ms
        q1, q3 = np.percentile(s, [25, 75])
        return {"median_ms": self.median, "mean_ms": float(s.mean()), "p10_ms": float(np.percentile(s, 10)),
                "p90_ms": float(np.percentile(s, 90)), "iqr_ms": float(q3 - q1), "min_ms": float(s.min()),
                "runs": int(s.size)}


def interleaved(paths: dict[str, str], feeds: dict[str, np.ndarray], threads: int, rounds: int,
                warmup: int = 5, seed: int = 0) -> dict[str, Timing]:
    """Time every model once per round, in a fresh (seeded) random order each round.

    A fixed rotation keeps each model's predecessor the same in every round, so cache or
    thread-spin effects of one model land on the same neighbour (a control with two copies of
    one model read 1.02x [1.01-1.02] that way); a random order spreads them over all.
    """
    sessions = {k: make_session(p, threads) for k, p in paths.items()}
    names = list(sessions)
    for _ in range(warmup):
        for k in names:
            sessions[k].run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            k = names[i]
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: Timing(k, np.asarray(v)) for k, v in times.items()}


def speedup_ci(ref: Timing, cand: Timing, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Median(ref)/median(cand) and a 95% paired bootstrap interval over rounds."""
    rng = np.random.default_rng(seed)
    a, b = ref.samples_ms, cand.samples_ms
    idx = rng.integers(0, a.size, (n_boot, a.size))
    boots = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"speedup": ref.median / cand.median, "ci95_low": float(lo), "ci95_high": float(hi)}
