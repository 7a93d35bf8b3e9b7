"""Honest measurement: interleaved latency, peak memory in a fresh process, fidelity, accuracy.

Measurement code never quantizes. Names are loaded lazily so that the memory probe child
(``python -m edgequant.measure._memprobe``) imports nothing but numpy and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SessionConfig": "session", "make_session": "session", "effective_threads": "session",
    "LatencyStats": "latency", "Speedup": "latency", "ModelTiming": "latency", "BenchResult": "latency",
    "benchmark_interleaved": "latency", "paired_speedup": "latency", "threads_sweep": "latency",
    "MemoryResult": "memory", "measure_memory": "memory", "baseline_rss_mb": "memory",
    "Fidelity": "fidelity", "OutputFidelity": "fidelity", "Collected": "fidelity", "collect": "fidelity",
    "collect_outputs": "fidelity", "compare_outputs": "fidelity", "top1_agreement": "fidelity",
    "top1": "accuracy", "load_metric": "accuracy",
    "feeds_from_source": "feeds", "session_inputs": "feeds",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
