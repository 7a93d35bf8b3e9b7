"""The device interface: where a model runs, and the whole measurement jobs it can do.

A device executes models; everything else (statistics, budgets, the speedup rule, the
recommendation) stays on the host so that one rule judges every device. Calls are whole jobs
(outputs over a data set, an interleaved timing run, a profile), never single inferences, so a
remote or emulated device pays its start-up cost once per job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..measure.coverage import Coverage, Placement
from ..measure.fidelity import Collected, stack_outputs
from ..measure.latency import BenchResult
from ..measure.memory import MemoryResult
from ..measure.session import SessionConfig

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class DeviceFacts:
    """What ``edgequant devices`` lists: DESIGN.md's device record."""

    name: str
    kind: str                 # cpu | qnn-htp | arm64-emu | ray
    available: bool
    why: str                  # why not available, or what it is
    can_time: bool            # False for simulators/emulators: their time is not latency
    emulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report_entry(self) -> dict[str, Any]:
        """report.json's ``device`` object."""
        return {"name": self.name, "kind": self.kind, "emulated": self.emulated}


class Device(ABC):
    """Executes models and returns raw results: outputs, timings, profiles, memory, coverage."""

    name: str
    kind: str
    session: SessionConfig

    @abstractmethod
    def facts(self) -> DeviceFacts:
        """Name, kind, availability (and why not), whether its time is real latency."""

    @abstractmethod
    def with_session(self, session: SessionConfig) -> Device:
        """The same device with other session settings (threads, graph level, ...)."""

    @abstractmethod
    def iter_outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any],
                     outputs: Sequence[Sequence[str]] | None = None,
                     ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
        """Per sample: every model's outputs (dict by name) and the sample's label.

        Streams, so callers that reduce per sample (sensitivity) hold one sample at a time.
        ``outputs`` restricts each model to the named outputs.
        """

    def outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any]) -> Collected:
        """Every model's outputs over ``samples`` (one pass), stacked along a new first axis."""
        return stack_outputs([str(p) for p in model_paths], self.iter_outputs(model_paths, samples))

    @abstractmethod
    def time_interleaved(self, model_paths: Sequence[str | Path], feeds: Any, *, warmup: int = 10,
                         runs: int = 100, seed: int = 0, confidence: float = 0.95, resamples: int = 1000,
                         sessions: Sequence[SessionConfig] | None = None, min_seconds: float = 0.0,
                         burst: int = 1) -> BenchResult:
        """Every model once per round, rounds in random order, in one process; speedups vs the first.

        ``sessions`` gives each entry its own settings (a settings sweep of one model).
        ``burst`` > 1: each model runs that many times in a row per round, the first (right after
        another model) untimed, the median of the rest its time for the round: a model's steady
        state, run after itself, with drift still paired across models (see ``time_burst``).
        ``min_seconds``: at least ``runs`` rounds and, where rounds are fast, more, until the timed
        rounds last about this long (capped at :data:`~edgequant.measure.latency.MAX_ROUNDS`):
        a 0.05 ms model's interval is then a few percent wide instead of tens of percent.
        """

    @abstractmethod
    def profile_ops(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 5,
                    runs: int = 20) -> dict[str, float]:
        """Mean kernel time per run (us) by op type, largest first."""

    @abstractmethod
    def profile_nodes(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 5,
                      runs: int | None = None, seconds: float = 3.0) -> dict[str, float]:
        """Per-node kernel time (us per run, median-based), warm-up excluded."""

    @abstractmethod
    def baseline_memory(self) -> float:
        """Peak RSS (MiB) of a bare runtime process: what every model's memory is measured over."""

    @abstractmethod
    def peak_memory(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 3, runs: int = 10,
                    baseline_mb: float | None = None) -> MemoryResult:
        """Peak RSS of a fresh process that loads, warms up and runs the model."""

    def peak_memories(self, model_paths: Sequence[str | Path], feeds: Feeds, *, warmup: int = 3, runs: int = 10,
                      baseline_mb: float | None = None) -> list[MemoryResult]:
        """:meth:`peak_memory` of each model, in order (a device may measure several at once)."""
        return [self.peak_memory(p, feeds, warmup=warmup, runs=runs, baseline_mb=baseline_mb) for p in model_paths]

    @abstractmethod
    def coverage(self, model_path: str | Path) -> Coverage:
        """Which compute ops run as integer kernels once the runtime has optimized the graph."""

    def location(self) -> dict[str, Any] | None:
        """Where a remote device runs (node id, host, CPU facts); None for this machine."""
        return None

    def placement(self, model_path: str | Path) -> Placement | None:
        """Accelerator vs CPU-fallback nodes; None on a device that is itself the CPU."""
        return None


class EmulatedDevice(Device):
    """A device whose time and memory are not the target's (a simulator, an emulator): every
    timing, profile and memory job refuses with ``untimed_reason`` instead of lying."""

    untimed_reason = "it is emulated"

    def _refuse(self, what: str) -> Exception:
        from ..errors import EdgequantError

        return EdgequantError(f"device {self.name} cannot measure {what}: {self.untimed_reason}")

    def time_interleaved(self, model_paths: Sequence[str | Path], feeds: Any, **kwargs: Any) -> BenchResult:
        raise self._refuse("latency")

    def profile_ops(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> dict[str, float]:
        raise self._refuse("per-op time")

    def profile_nodes(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> dict[str, float]:
        raise self._refuse("per-node time")

    def baseline_memory(self) -> float:
        raise self._refuse("memory")

    def peak_memory(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> MemoryResult:
        raise self._refuse("memory")
