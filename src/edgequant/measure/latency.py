"""Interleaved latency benchmarks: ratios that hold on a noisy machine.

Timing model A for a minute and then model B compares A's minute with B's minute: a burst of
background load, a thermal or frequency change lands on one model only. Here every model runs
once per *round* (in a fresh random order each round, to cancel order effects), so
each round is a paired observation taken under the same conditions. A model's speedup over the
first model is the ratio of medians, with a paired bootstrap confidence interval over rounds;
``faster_than_noise`` is true only when the whole interval lies above 1.

Devices run the rounds (``Device.time_interleaved``); this module turns their times into
statistics, so every device is judged by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgequantError
from .session import SessionConfig


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

    def accepts(self, min_speedup: float) -> bool:
        """The one acceptance rule: at least ``min_speedup`` faster, whole interval above 1."""
        return self.ratio >= min_speedup and self.ci_low > 1.0

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
    burst: int = 1          # runs in a row per model and round (> 1: steady state, see time_burst)

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
                "interleaved": True, "burst": self.burst, "wall_s": self.wall_s, "models": models}


def round_order(n_models: int, round_index: int, seed: int = 0) -> list[int]:
    """Model order in a round: a seeded random permutation per round.

    A fixed rotation gives every model the same predecessor each round, whose cache and
    frequency footprint then biases it (two copies of one model read 1.02x apart); a fresh
    permutation spreads those effects over all models.
    """
    rng = np.random.default_rng([seed, round_index])
    return [int(i) for i in rng.permutation(n_models)]


def time_burst(session: Any, feeds: dict, burst: int, clock: Callable[[], int]) -> int:
    """One model's time in one round (clock units): a single run, or with ``burst`` > 1 the median
    of runs 2..burst in a row, the first (right after another model) untimed.

    Why: what ran just before changes a short INT8 run by a fixed 1-2 ms on some CPUs (vector
    units' power and frequency state, caches; ``benchmarks/duty_cycle.py``), so once per round
    measures each model right after another, which no deployment does; a burst measures it after
    itself, as a stream of frames runs it, while rounds still pair the models against drift."""
    if burst > 1:
        session.run(None, feeds)
    times = []
    for _ in range(max(burst - 1, 1)):
        t0 = clock()
        session.run(None, feeds)
        times.append(clock() - t0)
    return int(np.median(times))


def bench_result(model_paths: Sequence[str], times_ms: np.ndarray, cfg: SessionConfig, *, warmup: int,
                 runs: int, wall_s: float, confidence: float = 0.95, resamples: int = 1000,
                 seed: int = 0, burst: int = 1) -> BenchResult:
    """Statistics of an interleaved run: ``times_ms[i, r]`` is model ``i``'s time in round ``r``."""
    timings = []
    for i, p in enumerate(model_paths):
        sp = paired_speedup(times_ms[0], times_ms[i], confidence=confidence, resamples=resamples, seed=seed)
        timings.append(ModelTiming(path=str(p), stats=LatencyStats.from_samples(times_ms[i]), speedup=sp))
    return BenchResult(models=tuple(timings), config=cfg, warmup=warmup, runs=runs, wall_s=wall_s, burst=burst)


#: Most rounds a minimum timing time (``min_seconds``) may add: 2000 paired rounds give a 0.05 ms
#: model a +-1 % interval, and the bootstrap over them stays well under a second.
MAX_ROUNDS = 2000


def check_run_counts(warmup: int, runs: int, burst: int = 1) -> None:
    """The one check every timing job makes before it loads anything."""
    if runs < 2:
        raise EdgequantError(f"--runs must be at least 2 (got {runs})")
    if warmup < 0:
        raise EdgequantError(f"--warmup must be >= 0 (got {warmup})")
    if burst < 1:
        raise EdgequantError(f"--burst must be at least 1 (1: each model once per round), got {burst}")
