"""`edgequant devices`: where models can run and be measured here, and why not;
`edgequant devices setup arm64-emu` builds what a device needs."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .. import api
from . import cli
from .report_view import make_console


@cli.group("devices", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list of {"name", "kind", "available", "why", '
                                                      '"can_time", "emulated"}.')
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[auto|ADDRESS]",
              help="Also list the boards on this Ray cluster (nodes started with the resource "
                   "edgequant_device:NAME), with each node's CPU facts.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool, ray_address: str | None) -> None:
    """Devices edgequant can run models on; only real hardware reports latency."""
    if ctx.invoked_subcommand is not None:
        return
    facts = api.devices(ray=ray_address)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in facts], indent=2))
        return
    table = Table("device", "kind", "available", "latency", "why")
    for f in facts:
        table.add_row(f.name, f.kind, "yes" if f.available else "no",
                      "measured" if f.can_time else "not measured (emulated/simulated)", f.why)
    make_console().print(table)


@devices.command("setup")
@click.argument("name", type=click.Choice(api.SETUP_DEVICES))
def setup(name: str) -> None:
    """Build what device NAME needs here (idempotent: a second run only checks)."""
    err = make_console(stderr=True)
    with err.status(f"setting up {name}") as status:
        facts = api.setup_device(name, progress=status.update)
    make_console().print(f"{facts.name}: {'ready' if facts.available else 'not available'} — {facts.why}")
