"""`edgequant fleet`: many models, one report each, one summary."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import api
from . import cli
from .report_view import make_console


def summary_table(summary: dict) -> Table:
    t = Table(title="fleet: FP32 vs recommended (measured here)", title_justify="left")
    for col in ("model", "status", "FP32 ms", "rec. ms", "speedup", "size MB", "peak MB", "accuracy", "recommended",
                "best INT8 tried"):
        t.add_column(col, justify="left" if col in ("model", "status", "recommended") else "right", overflow="fold")
    for r in summary["models"]:
        if r.get("fp32_ms") is None:
            t.add_row(r["name"], f"[red]{r['status']}[/]: {r.get('error') or ''}", *[""] * 8)
            continue
        acc = r.get("accuracy")
        acc_s = (f"{r['fp32_accuracy']['value']:.3f} -> {acc['value']:.3f}" if acc and r.get("fp32_accuracy")
                 else f"cos {r['fidelity']['cosine']:.4f}")
        t.add_row(r["name"], r["status"], f"{r['fp32_ms']:.2f}", f"{r['recommended_ms']:.2f}", f"{r['speedup']:.2f}x",
                  f"{r['fp32_mb']:.2f} -> {r['recommended_mb']:.2f}",
                  f"{r['fp32_peak_mb']:.0f} -> {r['recommended_peak_mb']:.0f}", acc_s, r["recommended"],
                  _attempt(r.get("best_int8")))
    return t


def _attempt(b: dict | None) -> str:
    if not b:
        return "-"
    acc = b.get("accuracy")
    quality = f"{acc['metric']} {acc['value']:.3f}" if acc else f"cos {b['fidelity']['cosine']:.3f}"
    undecided = ""
    if b.get("budget_decision") == "undecided":   # never recommended: say what would decide it
        need = b.get("samples_needed")
        undecided = f", undecided (needs >= {need} eval samples)" if need else ", undecided"
    return f"{b['name']} {b['speedup']:.2f}x, {quality}{undecided}"


@cli.command("fleet")
@click.argument("fleet_yaml", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=Path("reports/fleet"), show_default=True)
@click.option("--force", is_flag=True, help="Re-run models whose report is already up to date.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[auto|ADDRESS]",
              help="Run each model as a task on a Ray cluster (auto: the cluster this machine joined; "
                   "needs edgequant[ray]). Without it everything runs here and Ray is never imported.")
def fleet(fleet_yaml: Path, out: Path, force: bool, ray_address: str | None) -> None:
    """Quantize and measure every model in FLEET_YAML; a failing model does not stop the others."""
    entries = api.fleet_entries(fleet_yaml)  # validate everything before spending time
    err = make_console(stderr=True)
    for e in entries:
        for problem in e.missing_files():
            err.print(f"edgequant: error: {fleet_yaml}: {e.name}: {problem} (this model is skipped; the others run)")
    with err.status(f"fleet of {len(entries)} models") as status:
        result = api.fleet(fleet_yaml, out, force=force, ray=ray_address,
                           progress=lambda name, msg: status.update(f"[bold]{name}[/]: {msg}"))
    con = make_console()
    con.print(summary_table(result.summary))
    for r in result.summary["models"]:
        if r.get("reason"):
            con.print(f"[bold]{r['name']}[/] -> {r['recommended']}: {r['reason']}")
            b = r.get("best_int8")
            if b and r["recommended"] == "fp32":
                con.print(f"    best INT8 tried, {b['name']}: {b['verdict']}")
    con.print(f"wrote {out / 'index.html'} and one report per model under {out}/")
    if result.failed:
        err.print(f"edgequant: {len(result.failed)} of {len(entries)} models failed: "
                  + ", ".join(o.name for o in result.failed))
        raise click.exceptions.Exit(1)
