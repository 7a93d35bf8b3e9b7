"""Typed results of ``edgequant bench`` (``to_dict()`` is its "edgequant.bench/1" JSON document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .latency import LatencyStats, Speedup
from .memory import MemoryResult
from .session import SessionConfig

BENCH_SCHEMA = "edgequant.bench/1"


@dataclass(frozen=True)
class BenchModel:
    """One model of an interleaved run: latency, speedup over the first model, size, peak memory."""

    name: str                       # file name, or the path where two models share a file name
    path: str
    size_bytes: int
    latency: LatencyStats
    speedup: Speedup
    memory: MemoryResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """One entry of the bench document's ``models`` list."""
        sp, mem = self.speedup, self.memory
        return {"name": self.name, "path": self.path, "size_bytes": self.size_bytes,
                "latency_ms": self.latency.to_dict(), "throughput_per_s": self.latency.throughput_per_s,
                "speedup": sp.ratio, "speedup_ci": [sp.ci_low, sp.ci_high], "speedup_confidence": sp.confidence,
                "faster_than_noise": sp.faster_than_noise, "slower_than_noise": sp.slower_than_noise,
                "peak_memory_mb": mem.peak_rss_mb if mem is not None else None,
                "memory_delta_mb": mem.delta_mb if mem is not None else None,
                "samples_ms": list(self.latency.samples_ms)}


@dataclass(frozen=True)
class ThreadRun:
    """All models timed interleaved at one intra-op thread count."""

    threads: int
    wall_s: float
    models: tuple[BenchModel, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "wall_s": self.wall_s, "models": [m.to_dict() for m in self.models]}


@dataclass(frozen=True)
class BenchInput:
    """What the models were fed: the data source, whether it was the default, and its notes."""

    spec: str
    default: bool
    synthetic: bool
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "default": self.default, "synthetic": self.synthetic, "notes": list(self.notes)}


@dataclass(frozen=True)
class MemoryBaseline:
    """How peak memory was measured: a fresh process per model, over a bare-runtime baseline."""

    baseline_rss_mb: float
    warmup: int
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_rss_mb": self.baseline_rss_mb, "warmup": self.warmup, "runs": self.runs,
                "fresh_process": True}


@dataclass(frozen=True)
class BenchReport:
    """An interleaved benchmark: one :class:`ThreadRun` per thread count (the first carries memory).

    ``session`` is the settings of the first run (and of the memory probes); ``swept`` says
    whether a thread sweep was asked for.
    """

    machine: dict[str, Any]
    input: BenchInput
    session: SessionConfig
    warmup: int
    runs: int
    sweep: tuple[ThreadRun, ...]
    swept: bool = False
    memory: MemoryBaseline | None = None
    burst: int = 1                    # runs in a row per model and round (> 1: steady state)

    @property
    def models(self) -> tuple[BenchModel, ...]:
        """The models of the first (or only) thread count."""
        return self.sweep[0].models

    def to_dict(self) -> dict[str, Any]:
        """The ``edgequant.bench/1`` document ``edgequant bench --json`` writes."""
        return {"schema": BENCH_SCHEMA, "machine": dict(self.machine), "input": self.input.to_dict(),
                "session": self.session.to_dict(), "warmup": self.warmup, "runs": self.runs, "interleaved": True,
                "burst": self.burst,
                "memory": self.memory.to_dict() if self.memory is not None else None,
                "models": [m.to_dict() for m in self.models],
                "threads_sweep": [r.to_dict() for r in self.sweep] if self.swept else None}


def bench_models(result: Any, sizes: dict[str, int]) -> tuple[BenchModel, ...]:
    names = [m.name for m in result.models]
    return tuple(BenchModel(name=m.name if names.count(m.name) == 1 else m.path, path=m.path,
                            size_bytes=sizes[m.path], latency=m.stats, speedup=m.speedup)
                 for m in result.models)
