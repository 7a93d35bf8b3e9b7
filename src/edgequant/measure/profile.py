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


#: What an op type does, so an INT8 graph's kernel time can be set against an FP32 graph's class by
#: class (their op types differ: QLinearConv vs FusedConv, QLinearAdd vs Add).
_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("quantize/dequantize", QDQ_OPS),
    ("convolution", ("Conv",)),
    ("matmul", ("MatMul", "Gemm", "Attention")),
    ("pooling", ("Pool", "ReduceMean", "ReduceMax")),
    ("layout and copies", ("Transpose", "Reorder", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Pad",
                           "Concat", "Slice", "Split", "Gather", "Resize", "Identity", "Cast")),
)


def op_class(op: str) -> str:
    """``convolution``, ``matmul``, ``quantize/dequantize``, ``pooling``, ``layout and copies`` or
    ``element-wise and other`` (activations, Add/Mul in float or as QLinear ops, normalization)."""
    if op in QDQ_OPS:
        return "quantize/dequantize"
    return next((name for name, keys in _CLASSES[1:] if any(k in op for k in keys)), "element-wise and other")


def compare_profiles(slower: Mapping[str, float], faster: Mapping[str, float], *, top: int = 3) -> str:
    """Why ``slower`` (per-op-type us/run) takes longer than ``faster``: kernel totals, then the op
    classes that differ most, e.g. "kernel time 2.95 vs 2.40 ms/run; quantize/dequantize +0.83 ms,
    element-wise and other +0.36 ms, convolution -0.61 ms"."""
    def by_class(profile: Mapping[str, float]) -> Counter[str]:
        out: Counter[str] = Counter()
        for op, us in profile.items():
            out[op_class(op)] += us
        return out

    a, b = by_class(slower), by_class(faster)
    diffs = sorted(((a[c] - b[c], c) for c in set(a) | set(b)), key=lambda d: -abs(d[0]))
    parts = [f"{c} {d / 1000:+.2f} ms" for d, c in diffs[:top] if abs(d) >= 5.0]
    head = f"kernel time {sum(a.values()) / 1000:.2f} vs {sum(b.values()) / 1000:.2f} ms/run"
    return head + ("; " + ", ".join(parts) if parts else "")
