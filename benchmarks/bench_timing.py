"""Interleaved latency measurement: A B C, B C A, ... in one process, with paired bootstrap CIs.

Interleaving spreads slow drifts (thermal, other processes on a shared 2-core box) over all
variants alike; pairing each round's FP32 time with the same round's candidate time makes
the speedup CI reflect the noise the comparison actually saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgequant.devices import local_cpu
from edgequant.measure.latency import paired_speedup
from edgequant.measure.session import SessionConfig


def session_config(threads: int) -> SessionConfig:
    """What every benchmark session uses: ALL optimizations, sequential, one inter-op thread."""
    return SessionConfig(intra_op_threads=threads, inter_op_threads=1, graph_optimization="all")


def make_session(path: str, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A session on the product's CPU device (outputs, profiles)."""
    return local_cpu(session_config(threads)).open(path, profile_prefix=profile_prefix)


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
    """Every model once per round, in a fresh (seeded) random order each round: the product's
    own interleaved job (``CpuDevice.time_interleaved``), so benchmarks measure as edgequant does."""
    res = local_cpu(session_config(threads)).time_interleaved(list(paths.values()), feeds, warmup=warmup,
                                                              runs=rounds, seed=seed)
    return {k: Timing(k, np.asarray(m.stats.samples_ms)) for k, m in zip(paths, res.models)}


def speedup_ci(ref: Timing, cand: Timing, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Median(ref)/median(cand) and a 95% paired bootstrap interval over rounds."""
    sp = paired_speedup(ref.samples_ms, cand.samples_ms, resamples=n_boot, seed=seed)
    return {"speedup": sp.ratio, "ci95_low": sp.ci_low, "ci95_high": sp.ci_high}
