"""`edgequant run`: FP32 -> dynamic -> static, measured side by side, with a report."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from . import cli
from .options import budget_options, burst_option, min_time_option, model_and_data_options, run_options, threads_option
from .report_view import make_console, print_report


@cli.command("run")
@model_and_data_options(eval_required=False, default_out="reports/<model name>")
@budget_options
@threads_option
@click.option("--runs", type=click.IntRange(min=2), default=100, show_default=True)
@min_time_option
@burst_option
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--calib-limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--eval-limit", type=click.IntRange(min=1), default=None)
@click.option("--selective/--no-selective", default=False, show_default=True,
              help="Also search INT8/FP32 mixes by per-node timing (adds up to ~90 s).")
@click.option("--min-speedup", type=click.FloatRange(min=1.0), default=1.05, show_default=True,
              help="Smallest speedup over FP32 worth recommending INT8 for.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write report.json's content to this path (atomically).")
def run(model: Path, calib: str, eval_spec: str | None, out: Path | None, target: str, metric: str | None,
        preprocess: str | None, max_drop: float, max_abs_drop: float | None, threads: int, runs: int,
        min_time: float, warmup: int, calib_limit: int, eval_limit: int | None, min_speedup: float, selective: bool,
        json_path: Path | None, device: str, output_role: tuple[str, ...], burst: int) -> None:
    """Quantize MODEL dynamically and statically, measure all three side by side, recommend one."""
    options = run_options(target=target, device=device, output_role=output_role, max_drop=max_drop, max_abs_drop=max_abs_drop, threads=threads,
                          warmup=warmup, runs=runs, metric=metric, preprocess=preprocess, calib_limit=calib_limit,
                          eval_limit=eval_limit, min_speedup=min_speedup, selective=selective,
                          min_time_s=min_time, burst=burst)
    out = out or Path("reports") / model.stem
    with make_console(stderr=True).status("starting") as status:
        report = api.run(model, out, calib=calib, eval=eval_spec, options=options, progress=status.update)
    console = make_console()
    print_report(report, console)
    console.print(f"wrote {out / 'report.json'} and {out / 'report.html'}")
    rec = next(v for v in report["variants"] if v["name"] == report["recommended"])
    console.print(f"recommended model: {rec['path']}")
    if json_path is not None:
        from ..fsutil import write_text_atomic

        write_text_atomic(json_path, (out / "report.json").read_text())
        console.print(f"wrote {json_path}")
