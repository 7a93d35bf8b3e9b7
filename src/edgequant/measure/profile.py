"""Where the time goes: onnxruntime profiler events turned into per-op-type and per-node times.

Used to explain a slow INT8 variant with evidence (e.g. float islands between Q/DQ pairs, or
QuantizeLinear/DequantizeLinear time) instead of a guess. Devices produce the events
(``Device.profile_ops`` / ``Device.profile_nodes``); this module only reads them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_KERNEL = "_kernel_time"


def op_type_times(events: Sequence[Mapping[str, Any]], total_runs: int) -> dict[str, float]:
    """Mean kernel time per run (us) for each op type, largest first.

    Warm-up runs are included; they are few, and only the shares matter for explanations.
    """
    totals: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL):
            totals[e.get("args", {}).get("op_name", "?")] += float(e.get("dur", 0))
    return {op: us / max(total_runs, 1) for op, us in totals.most_common()}


def node_times(events: Sequence[Mapping[str, Any]], warmup: int, runs: int) -> dict[str, float]:
    """Per-node kernel time (us per run) after the warm-up runs: median x calls per run.

    Medians, not means: on a shared machine a burst of load hits a few runs, not the node.
    """
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    t_first = starts[warmup] if len(starts) > warmup else 0
    per: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL) and e.get("ts", 0) >= t_first:
            per[e["name"][: -len(_KERNEL)]].append(float(e.get("dur", 0)))
    return {k: float(np.median(v)) * len(v) / runs for k, v in per.items()}


def explain_profile(profile: Mapping[str, float], *, top: int = 4) -> str:
    """One sentence: total kernel time, the largest op types, and the Q/DQ share."""
    total = sum(profile.values())
    if total <= 0:
        return "no kernel time recorded"
    parts = [f"{op} {us / 1000:.2f} ms" for op, us in list(profile.items())[:top]]
    qdq = sum(profile.get(op, 0.0) for op in QDQ_OPS)
    return (f"kernel time {total / 1000:.2f} ms/run: " + ", ".join(parts)
            + (f"; quantize/dequantize {qdq / total:.0%} of it" if qdq else ""))
