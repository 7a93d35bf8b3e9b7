"""Where the time goes: per-op-type kernel time from onnxruntime's own profiler.

Used to explain a slow INT8 variant with evidence (e.g. float islands between Q/DQ pairs, or
QuantizeLinear/DequantizeLinear time) instead of a guess.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .session import SessionConfig, session_options

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def op_time_profile(model_path: str | Path, feeds: Mapping[str, np.ndarray], cfg: SessionConfig | None = None,
                    *, warmup: int = 5, runs: int = 20) -> dict[str, float]:
    """Mean kernel time per run (microseconds) for each op type, largest first."""
    import onnxruntime as ort

    cfg = cfg or SessionConfig()
    with tempfile.TemporaryDirectory(prefix="edgequant-prof-") as tmp:
        so = session_options(cfg)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(str(model_path), sess_options=so, providers=list(cfg.providers))
        for _ in range(warmup):
            sess.run(None, dict(feeds))
        for _ in range(runs):
            sess.run(None, dict(feeds))
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            totals[e.get("args", {}).get("op_name", "?")] += float(e.get("dur", 0))
    # Warm-up runs are profiled too; they are few, and only the shares matter for explanations.
    return {op: us / (warmup + runs) for op, us in totals.most_common()}


def explain_profile(profile: Mapping[str, float], *, top: int = 4) -> str:
    """One sentence: total kernel time, the largest op types, and the Q/DQ share."""
    total = sum(profile.values())
    if total <= 0:
        return "no kernel time recorded"
    parts = [f"{op} {us / 1000:.2f} ms" for op, us in list(profile.items())[:top]]
    qdq = sum(profile.get(op, 0.0) for op in QDQ_OPS)
    return (f"kernel time {total / 1000:.2f} ms/run: " + ", ".join(parts)
            + (f"; quantize/dequantize {qdq / total:.0%} of it" if qdq else ""))

