"""`edgequant eval`: output fidelity against a reference model, and the task metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from .. import api
from ..fsutil import write_text_atomic
from ..measure.machine import describe_machine
from ..measure.serialize import dumps
from . import cli
from ..measure.roles import parse_overrides
from .options import device_option, output_role_option, threads_option
from .report_view import agreement_cell, make_console


def _fmt(v: float | None, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _fidelity_table(fid: api.Fidelity) -> Table:
    table = Table("output", "cosine", "SQNR dB", "max abs err", "agreement [95% CI]",
                  title="fidelity vs reference", title_justify="left", box=box.SIMPLE_HEAD)
    for c in table.columns[1:]:
        c.justify = "right"
    rows = [("all (worst)", fid)] + (list(fid.per_output.items()) if len(fid.per_output) > 1 else [])
    for name, f in rows:
        table.add_row(name, _fmt(f.cosine, ".6f"), _fmt(f.sqnr_db, ".2f"), _fmt(f.max_abs_err, ".4g"),
                      agreement_cell(f.to_dict()))
    return table


def _accuracy_table(acc: dict[str, Any]) -> Table:
    table = Table("metric", "model", "reference", "drop", "relative drop", title="task metric",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for c in table.columns[1:]:
        c.justify = "right"
    rel = acc["drop_relative"]
    table.add_row(f"{acc['metric']} ({'higher' if acc['higher_is_better'] else 'lower'} is better)",
                  _fmt(acc["value"]), _fmt(acc["reference_value"]), _fmt(acc["drop"], "+.4f"),
                  "-" if rel is None else f"{rel:+.2%}")
    return table


@cli.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True,
              help="Data source: file.npz/.npy, a folder of .npy/.npz or images, or random:N.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Reference model (usually the FP32 original) for output fidelity and the metric drop.")
@click.option("--metric", default=None,
              help="Task metric: top1 (default when the data has labels) or module:function / file.py:function.")
@click.option("--preprocess", default=None, help="Preprocessing spec for image-folder data.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N samples.")
@threads_option
@device_option
@output_role_option
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the results as JSON (atomically).")
def eval_(model: Path, data_spec: str, reference: Path | None, metric: str | None, preprocess: str | None,
          limit: int | None, threads: int, device: str, output_role: tuple[str, ...], json_path: Path | None) -> None:
    """Compare MODEL's outputs with --reference's on the same samples (cosine, SQNR, max abs error,
    top-1 agreement) and score the task metric when the data has labels or --metric is given."""
    with make_console(stderr=True).status("starting") as status:
        res = api.evaluate(model, data_spec, reference=reference, metric=metric, preprocess=preprocess, limit=limit,
                           threads=threads, device=device, output_roles=parse_overrides(output_role),
                           progress=status.update)
    out = make_console()
    out.print(f"machine: {describe_machine(res.machine)}")
    out.print(f"model: {model}" + (f"  reference: {reference}" if reference is not None else "")
              + f"  data: {data_spec} ({res.samples} samples, {'labels' if res.has_labels else 'no labels'})")
    for note in res.notes:
        out.print(f"note: {note}")
    if res.fidelity is not None:
        out.print(_fidelity_table(res.fidelity))
    if res.accuracy is not None:
        out.print(_accuracy_table(res.accuracy))
    elif not res.has_labels and metric is None:
        out.print("task metric: not measured (the data has no labels; give --metric for a label-free metric)")
    if json_path is not None:
        write_text_atomic(json_path, dumps(res.to_dict()))
        out.print(f"wrote {json_path}")
