"""Peak memory of a model, as devices measure it: in a fresh process per model.

Peak RSS inside the benchmarking process would mix every model it ever loaded, numpy scratch
space and the interpreter; so a device runs each model in its own child process and reports
its peak RSS, and a bare-runtime child gives the baseline: ``delta_mb`` is what the model
itself costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MemoryResult:
    """Peak RSS of the model process, of the bare baseline process, and their difference (MiB)."""

    peak_rss_mb: float
    baseline_rss_mb: float
    delta_mb: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
