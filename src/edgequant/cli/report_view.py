"""Terminal rendering of a report: the seed's comparison table, with the numbers measured."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def make_console(*, stderr: bool = False) -> Console:
    """Rich console; when output is not a terminal (logs, CI, pipes) tables are wide and lines are
    never hard-wrapped, so a path or a recipe is never split across lines."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, width=None if tty else 160, soft_wrap=not tty)


AGREEMENTS = (("top1_agreement", "top-1"), ("nn_agreement", "NN"), ("detection_agreement", "det."))


def agreement_cell(fid: dict) -> str:
    """The agreement proxies an output role has, each with its 95% Wilson interval when counted."""
    parts = []
    for key, short in AGREEMENTS:
        if fid.get(key) is None:
            continue
        ci = (fid.get("intervals") or {}).get(key, {}).get("ci95")
        label = "" if key == "top1_agreement" else f"{short} "
        parts.append(f"{label}{fid[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    return ", ".join(parts) or "-"


def variants_table(report: dict, title: str | None = None) -> Table:
    t = Table(title=title or report["model"]["path"], title_justify="left")
    for col in ("variant", "MB", "p50 ms", "p95 ms", "speedup [95% CI]", "peak MB", "cosine",
                "agreement [95% CI]", "accuracy (drop)", "INT8 ops"):
        t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=col == "speedup [95% CI]")
    for v in report["variants"]:
        ci = v.get("speedup_ci")
        acc = v.get("accuracy")
        cov = v.get("int8_coverage")
        agr = agreement_cell(v["fidelity"])
        style = "green" if v["name"] == report["recommended"] else None
        t.add_row(
            v["name"], f"{v['size_bytes'] / 1e6:.2f}", f"{v['latency_ms']['p50']:.3f}", f"{v['latency_ms']['p95']:.3f}",
            f"{v['speedup']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
            f"{v['peak_memory_mb']:.0f}" if v["peak_memory_mb"] is not None and v["peak_memory_mb"] == v["peak_memory_mb"] else "-",
            f"{v['fidelity']['cosine']:.4f}", agr,
            f"{acc['value']:.4f} ({acc['drop']:+.4f})" if acc else "not measured",
            f"{cov['quantized_compute_ops']}/{cov['compute_ops']}" if cov else "-", style=style)
    return t


def print_report(report: dict, console: Console) -> None:
    m = report["machine"]
    console.print(f"[dim]{m['cpu']} [{', '.join(m['isa'])}], onnxruntime {m['onnxruntime']}, {m['threads']} thread(s), "
                  f"target {report.get('target', '?')}[/]")
    console.print(variants_table(report))
    for v in report["variants"][1:]:
        console.print(f"  {v['name']}: {v.get('verdict', '')}")
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    rec = report["recommended"]
    console.print(f"[bold]recommended: {rec}[/] — {report.get('recommendation_reason', '')}")
