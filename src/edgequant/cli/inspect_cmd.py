"""`edgequant inspect`: opset, inputs, ops, size; INT8 coverage for a quantized model."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .. import api
from . import cli
from .report_view import make_console


def print_facts(facts: api.ModelFacts) -> None:
    """The human-readable form of :func:`edgequant.api.inspect`'s facts."""
    con = make_console()
    con.print(f"[bold]{facts.path}[/]  opset {facts.opset}  {facts.size_bytes / 1e6:.2f} MB  "
              f"producer {facts.producer or '-'}")
    io = Table("", "name", "dtype", "shape", box=None)
    for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
        for t in tensors:
            io.add_row(kind, t.name, t.dtype, str(list(t.shape)))
    con.print(io)
    con.print("ops: " + ", ".join(f"{op}x{n}" for op, n in facts.op_counts.items()))
    cov = facts.int8_coverage
    if cov:
        con.print(f"INT8 coverage after ORT optimization: {cov.quantized_compute_ops}/{cov.compute_ops} compute ops")
        if cov.float_compute_nodes:
            con.print("left in float: " + ", ".join(cov.float_compute_nodes))


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def inspect(model: Path, as_json: bool) -> None:
    """Opset, inputs, ops and size; for a quantized model, how many compute ops run as INT8
    kernels after onnxruntime's own graph optimization, and which are left in float."""
    facts = api.inspect(model)
    if as_json:
        click.echo(json.dumps(facts.to_dict(), indent=2))
    else:
        print_facts(facts)
