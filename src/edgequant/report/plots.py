"""Report plots as inline PNG data URIs, so report.html opens offline as one file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

_COLORS = {"fp32": "#6b7280"}
_PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04"]


def _color(name: str, i: int) -> str:
    return _COLORS.get(name, _PALETTE[i % len(_PALETTE)])


def _to_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def latency_distribution(variants: list[dict]) -> str | None:
    """Box plot of per-run latencies (from the interleaved benchmark's raw samples)."""
    data = [(v["name"], v.get("latency_samples_ms") or []) for v in variants]
    data = [(n, s) for n, s in data if s]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(data)))
    ax.boxplot([s for _, s in data], orientation="horizontal", tick_labels=[n for n, _ in data], showfliers=True,
               flierprops={"markersize": 2})
    ax.set_xlabel("latency per run (ms)")
    ax.set_title("Latency distribution (interleaved runs)")
    ax.grid(axis="x", alpha=0.3)
    return _to_uri(fig)


def bars(variants: list[dict]) -> str:
    """Size, peak memory and speedup side by side."""
    names = [v["name"] for v in variants]
    colors = [_color(n, i) for i, n in enumerate(names)]
    panels = [("size (MB)", [v["size_bytes"] / 1e6 for v in variants]),
              ("peak memory (MB)", [v["peak_memory_mb"] or 0.0 for v in variants]),   # None: not measured
              ("speedup vs fp32 (x)", [v["speedup"] for v in variants])]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if title.startswith("speedup"):
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
    fig.tight_layout()
    return _to_uri(fig)


def accuracy_vs_speed(variants: list[dict], *, title: str = "Accuracy vs speed") -> str:
    """Each variant at (speedup, accuracy or fidelity): up and right is better."""
    use_acc = all(v.get("accuracy") for v in variants)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, v in enumerate(variants):
        y = v["accuracy"]["value"] if use_acc else v["fidelity"]["cosine"]
        ax.scatter([v["speedup"]], [y], color=_color(v["name"], i), s=40, zorder=3)
        ax.annotate(v["name"], (v["speedup"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs fp32 (x)")
    ax.set_ylabel(variants[0]["accuracy"]["metric"] if use_acc else "output cosine vs fp32")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _to_uri(fig)
