"""`edgequant doctor`: what this machine can do with INT8, and the target rule it picks."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .. import api
from . import cli
from .report_view import make_console


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def doctor(as_json: bool) -> None:
    """CPU features, onnxruntime version and providers, and the target `--target auto` uses."""
    facts = api.doctor()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key in ("cpu", "arch", "logical_cores", "isa", "vnni", "amx_int8", "python", "onnxruntime", "providers", "target", "why"):
        value = facts[key]
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    make_console().print(table)
