"""`edgequant devices`: where models can run and be measured here, and why not."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .. import api
from . import cli
from .report_view import make_console


@cli.command("devices")
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list of {"name", "kind", "available", "why", '
                                                      '"can_time", "emulated"}.')
def devices(as_json: bool) -> None:
    """Devices edgequant can run models on; only real hardware reports latency."""
    facts = api.devices()
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in facts], indent=2))
        return
    table = Table("device", "kind", "available", "latency", "why")
    for f in facts:
        table.add_row(f.name, f.kind, "yes" if f.available else "no",
                      "measured" if f.can_time else "not measured (emulated/simulated)", f.why)
    make_console().print(table)
