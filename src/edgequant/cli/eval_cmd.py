"""`edgequant eval`: output fidelity against a reference model, and the task metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from ..errors import EdgequantError
from ..metrics import accuracy_entry
from . import cli
from .report_view import make_console


def _fmt(v: float | None, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _fidelity_table(fid: Any) -> Table:
    table = Table("output", "cosine", "SQNR dB", "max abs err", "top-1 agreement",
                  title="fidelity vs reference", title_justify="left", box=box.SIMPLE_HEAD)
    for c in table.columns[1:]:
        c.justify = "right"
    rows = [("all (worst)", fid)] + (list(fid.per_output.items()) if len(fid.per_output) > 1 else [])
    for name, f in rows:
        table.add_row(name, _fmt(f.cosine, ".6f"), _fmt(f.sqnr_db, ".2f"), _fmt(f.max_abs_err, ".4g"),
                      _fmt(f.top1_agreement))
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
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Intra-op threads (0 = ORT default).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the results as JSON (atomically).")
def eval_(model: Path, data_spec: str, reference: Path | None, metric: str | None, preprocess: str | None,
          limit: int | None, threads: int, json_path: Path | None) -> None:
    """Compare MODEL's outputs with --reference's on the same samples (cosine, SQNR, max abs error,
    top-1 agreement) and score the task metric when the data has labels or --metric is given."""
    from ..data import Preprocess, open_source
    from ..fsutil import write_text_atomic
    from ..measure.serialize import dumps
    from ..measure.accuracy import load_metric
    from ..devices import local_cpu
    from ..measure.fidelity import compare_outputs
    from ..measure.machine import describe_machine, machine_facts
    from ..measure.session import SessionConfig
    from ..model import graph_inputs, load_model, sha256_file

    proto = load_model(model)
    if reference is not None:
        load_model(reference, check=False)  # clear errors for a missing/corrupt reference, before any run
    metric_fn = load_metric(metric) if metric else None
    source = open_source(data_spec, graph_inputs(proto), preprocess=Preprocess.parse(preprocess) if preprocess else None,
                         limit=limit)
    synthetic = bool(getattr(source, "synthetic", False))
    notes = list(getattr(source, "notes", ()))
    if metric_fn is None and source.has_labels and not synthetic:
        metric_fn = load_metric("top1")
    if reference is None and metric_fn is None:
        raise EdgequantError(f"{data_spec}: has no labels and no --reference or --metric was given: "
                             "nothing to measure")
    if synthetic:
        notes.append("synthetic data: task accuracy is not measured" + (
            "; fidelity is on random inputs" if reference is not None else ""))

    cfg = SessionConfig(intra_op_threads=threads)
    paths = [str(reference), str(model)] if reference is not None else [str(model)]
    err = make_console(stderr=True)
    with err.status(f"running {len(paths)} model(s) on {source.count or '?'} sample(s)"):
        got = local_cpu(cfg).outputs(paths, source)
    ref_out = got.outputs[0] if reference is not None else None
    cand_out = got.outputs[-1]
    fidelity = compare_outputs(ref_out, cand_out) if ref_out is not None else None
    accuracy = None
    if metric_fn is not None and not (synthetic and metric is None):
        ref_result = metric_fn(ref_out, got.labels, ref_out) if ref_out is not None else None
        accuracy = accuracy_entry(metric_fn(cand_out, got.labels, ref_out), ref_result)

    out = make_console()
    machine = machine_facts(cfg)
    out.print(f"machine: {describe_machine(machine)}")
    out.print(f"model: {model}" + (f"  reference: {reference}" if reference is not None else "")
              + f"  data: {data_spec} ({got.count} samples, {'labels' if got.labels is not None else 'no labels'})")
    for note in notes:
        out.print(f"note: {note}")
    if fidelity is not None:
        out.print(_fidelity_table(fidelity))
    if accuracy is not None:
        out.print(_accuracy_table(accuracy))
    elif got.labels is None and metric is None:
        out.print("task metric: not measured (the data has no labels; give --metric for a label-free metric)")

    if json_path is not None:
        doc = {"schema": "edgequant.eval/1", "machine": machine,
               "model": {"path": str(model), "sha256": sha256_file(model)},
               "reference": ({"path": str(reference), "sha256": sha256_file(reference)}
                             if reference is not None else None),
               "data": {"spec": data_spec, "samples": got.count, "has_labels": got.labels is not None,
                        "synthetic": synthetic, "limit": limit},
               "session": cfg.to_dict(),
               "fidelity": fidelity.to_dict() if fidelity is not None else None,
               "fidelity_per_output": fidelity.per_output_dict() if fidelity is not None else None,
               "accuracy": accuracy, "notes": notes}
        write_text_atomic(json_path, dumps(doc))
        out.print(f"wrote {json_path}")

