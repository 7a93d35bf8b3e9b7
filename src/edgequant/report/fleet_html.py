"""index.html for a fleet: one summary row per model, FP32 vs the recommended variant."""

from __future__ import annotations

import numpy as np

from .. import __version__
from . import plots
from .html import _env


def latency_bars(rows: list[dict]) -> str | None:
    """p50 latency per model: FP32, the best INT8 attempt, and the recommended variant."""
    done = [r for r in rows if r.get("fp32_ms") is not None]
    if not done:
        return None
    fig, ax = plots.plt.subplots(figsize=(7.5, 3))
    x = np.arange(len(done))
    best = [next((v["p50_ms"] for v in r["variants"] if r.get("best_int8") and v["name"] == r["best_int8"]["name"]),
                 np.nan) for r in done]
    ax.bar(x - 0.27, [r["fp32_ms"] for r in done], 0.27, label="fp32", color="#6b7280")
    ax.bar(x, best, 0.27, label="best INT8 tried", color="#f59e0b")
    ax.bar(x + 0.27, [r["recommended_ms"] for r in done], 0.27, label="recommended", color="#2563eb")
    ax.set_xticks(x, [r["name"] for r in done], rotation=20, fontsize=8)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title("Latency per model (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return plots._to_uri(fig)


def render_index(summary: dict) -> str:
    rows = summary["models"]
    return _env().get_template("fleet.html.j2").render(
        rows=rows, plot=latency_bars(rows), version=__version__,
        machine=next((r["machine"] for r in rows if r.get("machine")), None))
