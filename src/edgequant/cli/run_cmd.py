"""`edgequant run`: FP32 -> dynamic -> static, measured side by side, with a report."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline import Budget, RunOptions, run_pipeline
from ..targets import TARGETS
from . import cli
from .report_view import make_console, print_report


def session_option(f):
    """--threads shared by run/tune/fleet (bench has the full set of session flags)."""
    return click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
                        help="Intra-op threads for every measurement (0 = ORT default: all physical cores).")(f)


def budget_options(f):
    f = click.option("--max-abs-drop", type=click.FloatRange(min=0), default=None,
                     help="Allowed task-metric drop in the metric's own units (overrides --max-drop).")(f)
    f = click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
                     help="Allowed relative drop of the task metric vs FP32.")(f)
    return f


def model_and_data_options(*, eval_required: bool, default_out: str):
    """MODEL, its data sources, output folder, target and metric: shared by run and tune."""
    def apply(f):
        for option in reversed([
            click.argument("model", type=click.Path(path_type=Path)),
            click.option("--calib", required=True, help="Calibration data source."),
            click.option("--eval", "eval_spec", required=eval_required, default=None,
                         help="Evaluation data source (labels optional)."),
            click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
                         help=f"Output folder (default: {default_out})."),
            click.option("--target", type=click.Choice(["auto", *TARGETS]), default="auto", show_default=True),
            click.option("--metric", default=None, help="Task metric: top1 or module:function."),
            click.option("--preprocess", default=None, help="Preprocessing spec for image-folder sources."),
        ]):
            f = option(f)
        return f
    return apply


@cli.command("run")
@model_and_data_options(eval_required=False, default_out="reports/<model name>")
@budget_options
@session_option
@click.option("--runs", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--calib-limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--eval-limit", type=click.IntRange(min=1), default=None)
@click.option("--selective/--no-selective", default=False, show_default=True,
              help="Also search INT8/FP32 mixes by per-node timing (adds up to ~90 s).")
@click.option("--min-speedup", type=click.FloatRange(min=1.0), default=1.05, show_default=True,
              help="Smallest speedup over FP32 worth recommending INT8 for.")
def run(model: Path, calib: str, eval_spec: str | None, out: Path | None, target: str, metric: str | None,
        preprocess: str | None, max_drop: float, max_abs_drop: float | None, threads: int, runs: int,
        warmup: int, calib_limit: int, eval_limit: int | None, min_speedup: float, selective: bool) -> None:
    """Quantize MODEL dynamically and statically, measure all three side by side, recommend one."""
    from ..data import Preprocess
    from ..measure.session import SessionConfig

    options = RunOptions(
        target=target, budget=Budget(max_drop=max_drop, max_abs_drop=max_abs_drop),
        session=SessionConfig(intra_op_threads=threads), warmup=warmup, runs=runs, metric=metric,
        preprocess=Preprocess.parse(preprocess) if preprocess else None, calib_limit=calib_limit,
        eval_limit=eval_limit, min_speedup=min_speedup, selective=selective)
    out = out or Path("reports") / model.stem
    err = make_console(stderr=True)
    with err.status("starting") as status:
        report = run_pipeline(model, out, calib=calib, eval_spec=eval_spec, options=options,
                              progress=lambda msg: status.update(msg))
    print_report(report, make_console())
    make_console().print(f"wrote {out / 'report.json'} and {out / 'report.html'}")
