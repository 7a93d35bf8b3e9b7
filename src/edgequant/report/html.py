"""report.html: one self-contained page (inline CSS and PNG plots), rendered from report.json."""

from __future__ import annotations

from pathlib import Path

import jinja2

from .. import __version__
from . import plots


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("edgequant", "report"),
        autoescape=True,  # model names and paths are user data
        undefined=jinja2.ChainableUndefined,
    )


def render_html(report: dict) -> str:
    variants = report["variants"]
    figures = [
        ("Latency distribution", plots.latency_distribution(variants)),
        ("Size, memory and speed", plots.bars(variants)),
        ("Accuracy vs speed", plots.accuracy_vs_speed(variants)),
    ]
    if report.get("search_trace"):
        figures.append(("Search: accuracy vs speed (Pareto)", report.get("pareto_plot")))
    return _env().get_template("report.html.j2").render(
        r=report, model_name=Path(report["model"]["path"]).name, plots=figures, version=__version__)
