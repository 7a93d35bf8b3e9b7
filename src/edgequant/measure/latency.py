"""Interleaved latency benchmarks: ratios that hold on a noisy machine.

Timing model A for a minute and then model B compares A's minute with B's minute: a burst of
background load, a thermal or frequency change lands on one model only. Here every model runs
once per *round* (in a fresh random order each round, to cancel order effects), so
each round is a paired observation taken under the same conditions. A model's speedup over the
first model is the ratio of medians, with a paired bootstrap confidence interval over rounds;
``faster_than_noise`` is true only when the whole interval lies above 1.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgequantError
from .feeds import FeedsArg, resolve_feeds, session_inputs
from .session import SessionConfig, make_session


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-run latencies in milliseconds (``std`` is the sample std, ddof=1).

    ``throughput_per_s`` is runs per second, ``1000 / mean`` (one run = one feed, whatever its
    batch size); percentiles use numpy's default linear interpolation.
    """

    mean: float
    std: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float
    throughput_per_s: float
    samples_ms: tuple[float, ...] = field(repr=False, default=())

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
        x = np.asarray(samples_ms, dtype=np.float64).ravel()
        if x.size == 0:
            raise ValueError("no latency samples")
        mean = float(x.mean())
        p50, p95, p99 = (float(v) for v in np.percentile(x, [50, 95, 99]))
        return cls(mean=mean, std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                   min=float(x.min()), max=float(x.max()), p50=p50, p95=p95, p99=p99,
                   throughput_per_s=1000.0 / mean if mean > 0 else float("inf"),
                   samples_ms=tuple(float(v) for v in x))

    def to_dict(self) -> dict[str, float]:
        """The report's ``latency_ms`` object (raw samples excluded)."""
        return {k: getattr(self, k) for k in ("mean", "std", "min", "max", "p50", "p95", "p99")}


@dataclass(frozen=True)
class Speedup:
    """``ratio`` = median(first model) / median(this model): > 1 means this model is faster."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int

    @property
    def faster_than_noise(self) -> bool:
        return self.ci_low > 1.0

    @property
    def slower_than_noise(self) -> bool:
        return self.ci_high < 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "ci": [self.ci_low, self.ci_high], "confidence": self.confidence,
                "resamples": self.resamples, "faster_than_noise": self.faster_than_noise,
                "slower_than_noise": self.slower_than_noise}


def paired_speedup(reference_ms: Sequence[float] | np.ndarray, candidate_ms: Sequence[float] | np.ndarray,
                   *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Speedup:
    """Ratio of medians with a percentile bootstrap CI that resamples whole rounds (pairs).

    Resampling pairs keeps each round's shared conditions together, so machine-wide slowdowns
    cancel in the ratio instead of widening the interval.
    """
    ref = np.asarray(reference_ms, dtype=np.float64).ravel()
    cand = np.asarray(candidate_ms, dtype=np.float64).ravel()
    if ref.size != cand.size or ref.size == 0:
        raise ValueError("paired samples must be non-empty and of equal length")
    ratio = float(np.median(ref) / np.median(cand))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ref.size, size=(resamples, ref.size))
    boot = np.median(ref[idx], axis=1) / np.median(cand[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
    return Speedup(ratio=ratio, ci_low=lo, ci_high=hi, confidence=confidence, resamples=resamples)


@dataclass(frozen=True)
class ModelTiming:
    """One model's latencies from an interleaved run, and its speedup over the first model."""

    path: str
    stats: LatencyStats
    speedup: Speedup

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class BenchResult:
    """An interleaved benchmark: all models, same process, same feeds, same rounds."""

    models: tuple[ModelTiming, ...]
    config: SessionConfig
    warmup: int
    runs: int
    wall_s: float

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        models = []
        for m in self.models:
            entry: dict[str, Any] = {"path": m.path, "latency_ms": m.stats.to_dict(),
                                     "throughput_per_s": m.stats.throughput_per_s,
                                     "speedup": m.speedup.to_dict()}
            if samples:
                entry["samples_ms"] = list(m.stats.samples_ms)
            models.append(entry)
        return {"config": self.config.to_dict(), "warmup": self.warmup, "runs": self.runs,
                "interleaved": True, "wall_s": self.wall_s, "models": models}


def round_order(n_models: int, round_index: int, seed: int = 0) -> list[int]:
    """Model order in a round: a seeded random permutation per round.

    A fixed rotation gives every model the same predecessor each round, whose cache and
    frequency footprint then biases it (two copies of one model read 1.02x apart); a fresh
    permutation spreads those effects over all models.
    """
    rng = np.random.default_rng([seed, round_index])
    return [int(i) for i in rng.permutation(n_models)]


def benchmark_interleaved(model_paths: Sequence[str | Path], feeds_per_model: FeedsArg,
                          cfg: SessionConfig | None = None, *, warmup: int = 10, runs: int = 100,
                          confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> BenchResult:
    """Time every model ``runs`` times, interleaved in randomly ordered rounds, in this process.

    All sessions are created (and their feeds checked) before any timing; each model then gets
    ``warmup`` untimed runs. ``time.perf_counter_ns`` brackets ``session.run`` only, and the
    garbage collector is paused while timing so a collection cannot land inside a run.
    """
    if not model_paths:
        raise EdgequantError("no models to benchmark")
    if runs < 2:
        raise EdgequantError(f"--runs must be at least 2 (got {runs})")
    if warmup < 0:
        raise EdgequantError(f"--warmup must be >= 0 (got {warmup})")
    cfg = cfg or SessionConfig()
    paths = [str(p) for p in model_paths]
    sessions = [make_session(p, cfg) for p in paths]
    feeds = resolve_feeds(feeds_per_model, paths, [session_inputs(s) for s in sessions])

    n = len(sessions)
    times = np.zeros((n, runs), dtype=np.int64)
    start = time.perf_counter()
    for i, (sess, f) in enumerate(zip(sessions, feeds)):
        try:
            for _ in range(warmup):
                sess.run(None, f)
            if warmup == 0:  # still surface run-time errors before timing starts
                sess.run(None, f)
        except Exception as exc:  # noqa: BLE001 - ORT raises many types
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise EdgequantError(f"{paths[i]}: inference failed: {first.strip()[:400]}") from None

    gc_was_enabled = gc.isenabled()
    gc.disable()
    clock = time.perf_counter_ns
    try:
        for r in range(runs):
            for i in round_order(n, r, seed):
                sess, f = sessions[i], feeds[i]
                t0 = clock()
                sess.run(None, f)
                times[i, r] = clock() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    wall = time.perf_counter() - start

    ms = times / 1e6
    timings = []
    for i, p in enumerate(paths):
        sp = paired_speedup(ms[0], ms[i], confidence=confidence, resamples=resamples, seed=seed)
        timings.append(ModelTiming(path=p, stats=LatencyStats.from_samples(ms[i]), speedup=sp))
    return BenchResult(models=tuple(timings), config=cfg, warmup=warmup, runs=runs, wall_s=wall)


def threads_sweep(model_paths: Sequence[str | Path], feeds_per_model: FeedsArg,
                  cfg: SessionConfig | None, threads: Sequence[int], *, warmup: int = 10,
                  runs: int = 100, **kwargs: Any) -> dict[int, BenchResult]:
    """One interleaved benchmark per intra-op thread count (speedups within each count)."""
    cfg = cfg or SessionConfig()
    bad = [t for t in threads if not isinstance(t, int) or t < 1]
    if bad or not threads:
        raise EdgequantError(f"thread counts must be integers >= 1 (got {list(threads)})")
    return {t: benchmark_interleaved(model_paths, feeds_per_model, cfg.with_(intra_op_threads=t),
                                     warmup=warmup, runs=runs, **kwargs)
            for t in threads}
