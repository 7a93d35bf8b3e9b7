"""`edgequant inspect`: opset, inputs, ops, size; INT8 coverage for a quantized model."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .. import model as model_io
from . import cli
from .report_view import make_console


def inspect_facts(path: Path) -> dict:
    model = model_io.load_model(path)
    info = model_io.describe(model, path)
    facts = {
        "path": str(path), "opset": info.opset, "ir_version": info.ir_version, "producer": info.producer,
        "size_bytes": model_io.model_size_bytes(path), "sha256": model_io.sha256_file(path),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape)} for s in info.inputs],
        "outputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape)} for s in info.outputs],
        "op_counts": info.op_counts, "quantized": info.is_quantized, "int8_coverage": None,
    }
    if info.is_quantized:
        from ..qdq import int8_coverage

        quantized, compute, float_nodes = int8_coverage(path)
        facts["int8_coverage"] = {"quantized_compute_ops": quantized, "compute_ops": compute,
                                  "float_compute_nodes": list(float_nodes)}
    return facts


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def inspect(model: Path, as_json: bool) -> None:
    """Opset, inputs, ops and size; for a quantized model, how many compute ops run as INT8
    kernels after onnxruntime's own graph optimization, and which are left in float."""
    facts = inspect_facts(model)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    con = make_console()
    con.print(f"[bold]{facts['path']}[/]  opset {facts['opset']}  {facts['size_bytes'] / 1e6:.2f} MB  "
              f"producer {facts['producer'] or '-'}")
    io = Table("", "name", "dtype", "shape", box=None)
    for kind in ("inputs", "outputs"):
        for s in facts[kind]:
            io.add_row(kind[:-1], s["name"], s["dtype"], str(s["shape"]))
    con.print(io)
    con.print("ops: " + ", ".join(f"{op}x{n}" for op, n in facts["op_counts"].items()))
    cov = facts["int8_coverage"]
    if cov:
        con.print(f"INT8 coverage after ORT optimization: {cov['quantized_compute_ops']}/{cov['compute_ops']} compute ops")
        if cov["float_compute_nodes"]:
            con.print("left in float: " + ", ".join(cov["float_compute_nodes"]))
