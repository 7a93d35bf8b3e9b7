"""`edgequant tune`: search recipes for the fastest INT8 model within the accuracy budget."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import api
from . import cli
from .options import budget_options, burst_option, min_time_option, model_and_data_options, run_options, threads_option
from .report_view import make_console, print_report


def trace_table(report: dict) -> Table:
    """The search trace: every candidate, in the order tried."""
    t = Table(title="search trace", title_justify="left")
    for col in ("#", "candidate", "recipe", "speedup", "accuracy / fidelity", "INT8", "outcome"):
        t.add_column(col, justify="right" if col in ("#", "speedup") else "left", overflow="fold")
    for i, row in enumerate(report.get("search_trace", []), start=1):
        sp = row.get("speedup")
        t.add_row(str(i), row["name"], row["recipe_summary"], "–" if sp is None else f"{sp:.2f}x",
                  row["quality_summary"], row.get("coverage_summary") or "–", row["outcome"],
                  style="green" if row["name"] == report["recommended"] else None)
    return t


@cli.command("tune")
@model_and_data_options(eval_required=True, default_out="reports/<model name>-tune")
@budget_options
@threads_option
@click.option("--time-budget", type=click.FloatRange(min=0), default=None,
              help="Stop the search after MIN minutes and report what was found.")
@click.option("--runs", type=click.IntRange(min=2), default=100, show_default=True,
              help="Interleaved rounds of the final measurement.")
@click.option("--trial-runs", type=click.IntRange(min=2), default=30, show_default=True,
              help="Interleaved rounds per search trial.")
@min_time_option
@burst_option
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Candidates quantized at once: processes here (at most 2), or Ray tasks with --ray "
                   "(timing always runs in one process, here).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[auto|ADDRESS]",
              help="Quantize candidates as tasks on a Ray cluster (needs edgequant[ray]).")
@click.option("--max-candidates", type=click.IntRange(min=2), default=24, show_default=True)
@click.option("--calib-limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--eval-limit", type=click.IntRange(min=1), default=None)
@click.option("--no-float-fallback", "no_float_fallback", is_flag=True,
              help="Never keep layers in float: fully INT8 (16-bit where the target runs it natively) "
                   "or say it could not be done. Implied for --target qnn.")
@click.option("--qat-minutes", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Training time of the QAT step, tried when every post-training step missed the budget "
                   "(needs edgequant[qat]; cut to --time-budget); 0: never.")
def tune(model: Path, calib: str, eval_spec: str, out: Path | None, target: str, metric: str | None,
         preprocess: str | None, max_drop: float, max_abs_drop: float | None, threads: int,
         time_budget: float | None, runs: int, trial_runs: int, min_time: float, warmup: int, workers: int,
         max_candidates: int, calib_limit: int, eval_limit: int | None, device: str, output_role: tuple[str, ...],
         no_float_fallback: bool, qat_minutes: float, ray_address: str | None, burst: int) -> None:
    """Find the fastest quantized MODEL within the accuracy budget, by measurement."""
    run = run_options(target=target, device=device, output_role=output_role, max_drop=max_drop, max_abs_drop=max_abs_drop, threads=threads, warmup=warmup,
                      runs=runs, metric=metric, preprocess=preprocess, calib_limit=calib_limit, eval_limit=eval_limit,
                      min_time_s=min_time, burst=burst)
    options = api.TuneOptions(run=run, time_budget_min=time_budget, trial_runs=trial_runs, workers=workers,
                              max_candidates=max_candidates, float_fallback=False if no_float_fallback else None,
                              qat_minutes=qat_minutes)
    out = out or Path("reports") / f"{model.stem}-tune"
    with make_console(stderr=True).status("starting") as status:
        report = api.tune(model, out, calib=calib, eval=eval_spec, options=options, ray=ray_address,
                          progress=status.update)
    console = make_console()
    console.print(trace_table(report))
    print_report(report, console)
    if report.get("advice"):
        console.print(f"[bold]advice:[/] {report['advice']}")
    console.print(f"wrote {out / 'report.json'} and {out / 'report.html'}")
