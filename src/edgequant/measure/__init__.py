"""Honest measurement: statistics over what devices return (interleaved latency, peak memory,
fidelity, accuracy, INT8 coverage).

Measurement code never quantizes and never loads a model: devices (``edgequant.devices``) run
the jobs. Names are loaded lazily so that the memory probe child imports nothing but numpy and
onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SessionConfig": "session", "effective_threads": "session",
    "LatencyStats": "latency", "Speedup": "latency", "ModelTiming": "latency", "BenchResult": "latency",
    "paired_speedup": "latency", "bench_result": "latency",
    "MemoryResult": "memory", "Coverage": "coverage", "coverage_of_graph": "coverage",
    "Fidelity": "fidelity", "OutputFidelity": "fidelity", "Collected": "fidelity",
    "compare_outputs": "fidelity", "top1_agreement": "fidelity",
    "top1": "accuracy", "load_metric": "accuracy",
    "feeds_from_source": "feeds", "session_inputs": "feeds",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
