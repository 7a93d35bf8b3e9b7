"""Typed records of a run: a candidate to measure, and a measured variant.

A :class:`Variant` is what the pipeline measures once per candidate on a device, what the
recommendation annotates, and what tune and fleet read; ``to_dict()`` is report.json's variant
object (schema ``edgequant.report/1``, unchanged), the only place that shape is spelled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure.coverage import Coverage
from .measure.fidelity import Fidelity
from .measure.latency import LatencyStats, Speedup
from .measure.memory import MemoryResult


@dataclass(frozen=True)
class KnownQuality:
    """A candidate's fidelity and task accuracy, already measured on the run's device over the run's
    evaluation data (``tune``'s search): the same file gives the same outputs there, so the final
    measurement does not run it on that device again (an HTP simulator: ~1 s per BERT text)."""

    fidelity: Fidelity
    accuracy: dict | None
    device: str


@dataclass
class Candidate:
    """A model to measure: the FP32 original or a quantized variant."""

    name: str
    path: Path
    config: dict
    notes: list[str] = field(default_factory=list)
    known: KnownQuality | None = None     # quality measured already (tune): outputs are not run again

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))


@dataclass
class Variant:
    """One candidate measured side by side with FP32 on one device."""

    name: str
    path: str
    config: dict
    size_bytes: int
    latency: LatencyStats
    speed: Speedup                        # vs FP32, from the same interleaved rounds
    fidelity: Fidelity                    # outputs vs FP32 on the evaluation data
    accuracy: dict | None = None          # metrics.accuracy_entry, when a task metric applies
    coverage: Coverage | None = None      # INT8 kernels after the runtime's optimization
    memory: MemoryResult | None = None    # fresh-process peak RSS (None: not measured)
    notes: list[str] = field(default_factory=list)
    profile_us_by_op: dict[str, float] | None = None
    placement: dict | None = None         # accelerator/CPU node split (accelerator devices only)
    measured_on: dict | None = None       # {"outputs": device, "latency": device}
    within_budget: bool | None = None     # set by the recommendation (False when undecided)
    budget: dict | None = None            # verdict.Judgement.to_dict(): decision, checks with 95% CIs
    verdict: str | None = None            # plain words, set by the recommendation

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))

    @property
    def speedup(self) -> float:
        return self.speed.ratio

    @property
    def runs_no_int8(self) -> bool:
        """A quantized variant none of whose compute ops runs as an INT8 kernel is not INT8."""
        return self.coverage is not None and self.coverage.quantized_compute_ops == 0

    def to_dict(self) -> dict[str, Any]:
        """report.json's variant object."""
        d: dict[str, Any] = {
            "name": self.name, "path": self.path, "config": self.config, "size_bytes": self.size_bytes,
            "latency_ms": self.latency.to_dict(), "latency_samples_ms": list(self.latency.samples_ms),
            "throughput_per_s": self.latency.throughput_per_s,
            "peak_memory_mb": self.memory.peak_rss_mb if self.memory else float("nan"),
            "memory_delta_mb": self.memory.delta_mb if self.memory else None,
            "speedup": self.speed.ratio, "speedup_ci": [self.speed.ci_low, self.speed.ci_high],
            "faster_than_noise": self.speed.faster_than_noise, "slower_than_noise": self.speed.slower_than_noise,
            "fidelity": self.fidelity.to_dict(), "accuracy": self.accuracy,
            "int8_coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "notes": list(self.notes), "profile_us_by_op": self.profile_us_by_op, "placement": self.placement,
            "measured_on": self.measured_on,
        }
        if self.memory is not None:
            d["memory_baseline_mb"] = self.memory.baseline_rss_mb
        if self.within_budget is not None:
            d["within_budget"] = self.within_budget
        if self.budget is not None:
            d["budget_decision"] = self.budget["decision"]
            d["budget_checks"] = self.budget["checks"]
            d["samples_needed"] = self.budget["samples_needed"]
        if self.verdict is not None:
            d["verdict"] = self.verdict
        return d
