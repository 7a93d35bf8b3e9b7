"""`edgequant bench`: interleaved latency, speedup with a confidence interval, peak memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from ..errors import EdgequantError
from . import cli
from .report_view import make_console

DEFAULT_INPUT = "random:1"
MEMORY_MAX_WARMUP = 5   # peak RSS settles after the first runs (arena growth); no need for all runs
MEMORY_MAX_RUNS = 20


def _thread_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,2,4, got {value!r}") from None
    if not out or any(t < 1 for t in out):
        raise click.BadParameter(f"thread counts must be >= 1, got {value!r}")
    return out


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _verdict(entry: dict[str, Any], first: bool) -> str:
    if first:
        return "reference"
    if entry["faster_than_noise"]:
        return "[green]faster[/]"
    if entry["slower_than_noise"]:
        return "[red]slower[/]"
    return "within noise"


def _model_entries(result: Any, sizes: dict[str, int]) -> list[dict[str, Any]]:
    names = [m.name for m in result.models]  # same file name in other folders: show the path
    entries = []
    for m in result.models:
        entries.append({
            "name": m.name if names.count(m.name) == 1 else m.path, "path": m.path, "size_bytes": sizes[m.path],
            "latency_ms": m.stats.to_dict(), "throughput_per_s": m.stats.throughput_per_s,
            "speedup": m.speedup.ratio, "speedup_ci": [m.speedup.ci_low, m.speedup.ci_high],
            "speedup_confidence": m.speedup.confidence,
            "faster_than_noise": m.speedup.faster_than_noise, "slower_than_noise": m.speedup.slower_than_noise,
            "peak_memory_mb": None, "memory_delta_mb": None,
            "samples_ms": list(m.stats.samples_ms)})
    return entries


def _name_column(table: Table, entries: list[dict[str, Any]]) -> None:
    """Never truncate or split a model name: the numbers columns give way instead."""
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max(len(e["name"]) for e in entries)


def _table(*columns: str, title: str) -> Table:
    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True)


def _latency_table(title: str, entries: list[dict[str, Any]]) -> Table:
    table = _table("model", "mean", "std", "min", "max", "p50", "p95", "p99", "runs/s", title=title)
    _name_column(table, entries)
    for c in table.columns[1:]:
        c.justify = "right"
    for e in entries:
        lat = e["latency_ms"]
        table.add_row(e["name"], *(_ms(lat[k]) for k in ("mean", "std", "min", "max", "p50", "p95", "p99")),
                      f"{e['throughput_per_s']:.0f}")
    return table


def _speedup_table(entries: list[dict[str, Any]], threads: int) -> Table:
    table = _table("model", "speedup", "95% CI", "verdict",
                   title=f"speedup vs {entries[0]['name']}, {threads} intra-op thread(s)")
    _name_column(table, entries)
    for c in table.columns[1:3]:
        c.justify = "right"
    for i, e in enumerate(entries):
        lo, hi = e["speedup_ci"]
        table.add_row(e["name"], f"{e['speedup']:.2f}x", "-" if i == 0 else f"{lo:.2f}-{hi:.2f}", _verdict(e, i == 0))
    return table


def _size_memory_table(entries: list[dict[str, Any]], memory: bool) -> Table:
    table = _table("model", "size MB", *(("peak RSS MB", "over baseline MB") if memory else ()),
                   title="size and peak memory" if memory else "size")
    _name_column(table, entries)
    for c in table.columns[1:]:
        c.justify = "right"
    for e in entries:
        row = [e["name"], f"{e['size_bytes'] / 1e6:.2f}"]
        if memory:
            row += [f"{e['peak_memory_mb']:.1f}", f"{e['memory_delta_mb']:+.1f}"]
        table.add_row(*row)
    return table


@cli.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="Intra-op threads (0 = ORT default: one per physical core).")
@click.option("--inter-op", type=click.IntRange(min=0), default=0, show_default=True,
              help="Inter-op threads (0 = ORT default; matters only with --execution-mode parallel).")
@click.option("--graph-opt", type=click.Choice(["all", "extended", "basic", "disable"]), default="all",
              show_default=True, help="ORT graph optimization level.")
@click.option("--no-mem-arena", is_flag=True, help="Disable the CPU memory arena (less memory, often slower).")
@click.option("--no-mem-pattern", is_flag=True, help="Disable memory pattern planning.")
@click.option("--execution-mode", type=click.Choice(["sequential", "parallel"]), default="sequential",
              show_default=True)
@click.option("--spinning/--no-spinning", default=None,
              help="Let idle intra-op threads spin (default: ORT's choice, which spins).")
@click.option("--provider", "providers", multiple=True,
              help="Execution provider, repeatable or comma-separated, in priority order "
                   "(default: CPUExecutionProvider).")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs per model.")
@click.option("--runs", type=click.IntRange(min=2), default=100, show_default=True,
              help="Timed rounds; each round runs every model once, in a random order.")
@click.option("--input", "input_spec", default=None,
              help=f"Input data source; one sample is used (default: {DEFAULT_INPUT}, synthetic).")
@click.option("--preprocess", default=None, help="Preprocessing spec when --input is an image folder.")
@click.option("--threads-sweep", callback=_thread_list, default=None, metavar="N,N,...",
              help="Repeat the interleaved benchmark at each intra-op thread count (replaces --threads).")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Peak memory of each model in a fresh process (plus a bare-onnxruntime baseline).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the results as JSON (atomically).")
def bench(models: tuple[Path, ...], threads: int, inter_op: int, graph_opt: str, no_mem_arena: bool,
          no_mem_pattern: bool, execution_mode: str, spinning: bool | None, providers: tuple[str, ...],
          warmup: int, runs: int, input_spec: str | None, preprocess: str | None,
          threads_sweep: list[int] | None, memory: bool, json_path: Path | None) -> None:
    """Time MODELS interleaved in one process (A B C, B C A, ...); speedups are relative to the first
    model (median ratio, paired bootstrap 95% CI over rounds)."""
    from ..fsutil import write_text_atomic
    from ..measure.serialize import dumps
    from ..measure.feeds import SourceFeeds
    from ..devices import local_cpu
    from ..measure.machine import describe_machine, machine_facts
    from ..measure.session import SessionConfig
    from ..model import model_size_bytes

    for m in models:
        if not m.is_file():
            raise EdgequantError(f"{m}: no such file" if not m.exists() else f"{m}: not a file")
    provider_list = tuple(p.strip() for item in providers for p in item.split(",") if p.strip())
    sweep = threads_sweep or [threads]
    cfg = SessionConfig(intra_op_threads=sweep[0], inter_op_threads=inter_op, graph_optimization=graph_opt,
                        enable_mem_arena=not no_mem_arena, enable_mem_pattern=not no_mem_pattern,
                        execution_mode=execution_mode, allow_spinning=spinning,
                        providers=provider_list or ("CPUExecutionProvider",))
    pp = None
    if preprocess:
        from ..data import Preprocess

        pp = Preprocess.parse(preprocess)
    spec = input_spec or DEFAULT_INPUT
    feeds = SourceFeeds(spec, preprocess=pp)
    paths = [str(m) for m in models]
    sizes: dict[str, int] = {}

    out = make_console()
    err = make_console(stderr=True)
    machine = machine_facts(cfg)
    out.print(f"machine: {describe_machine(machine)}")

    sweep_results: list[dict[str, Any]] = []
    with err.status("benchmarking") as status:
        for t in sweep:
            status.update(f"timing {len(paths)} model(s) interleaved, {t} thread(s): {warmup} warm-up, {runs} rounds")
            res = local_cpu(cfg.with_(intra_op_threads=t)).time_interleaved(paths, feeds, warmup=warmup, runs=runs)
            # after the sessions exist: onnxruntime has already rejected unreadable models by name
            sizes = sizes or {p: model_size_bytes(p) for p in paths}
            sweep_results.append({"threads": t, "wall_s": res.wall_s, "models": _model_entries(res, sizes)})
        entries = sweep_results[0]["models"]
        base = None
        if memory:
            status.update("peak memory: bare onnxruntime baseline (fresh process)")
            device = local_cpu(cfg)
            base = device.baseline_memory()
            for e in entries:
                status.update(f"peak memory of {e['path']} (fresh process)")
                mem = device.peak_memory(e["path"], feeds.by_path[e["path"]], warmup=min(warmup, MEMORY_MAX_WARMUP),
                                     runs=min(runs, MEMORY_MAX_RUNS), baseline_mb=base)
                e["peak_memory_mb"], e["memory_delta_mb"] = mem.peak_rss_mb, mem.delta_mb

    synthetic = bool(feeds.synthetic)
    out.print(f"input: {spec}" + (" (default)" if input_spec is None else "")
              + (" — synthetic data: latency only, accuracy not measured" if synthetic else ""))
    for note in feeds.notes:
        out.print(f"  note: {note}")
    out.print(f"session: graph-opt {cfg.graph_optimization}, arena {'on' if cfg.enable_mem_arena else 'off'}, "
              f"providers {', '.join(cfg.providers)}; {warmup} warm-up + {runs} interleaved rounds per model")
    for block in sweep_results:
        out.print(_latency_table(f"latency (ms), {block['threads']} intra-op thread(s)", block["models"]))
        if len(paths) > 1:
            out.print(_speedup_table(block["models"], block["threads"]))
    out.print(_size_memory_table(entries, memory))
    if len(paths) > 1:
        out.print("speedup = median(first) / median(model), CI = paired bootstrap over rounds; "
                  "'within noise' means the CI includes 1")
    if memory:
        out.print(f"peak memory: peak RSS of a fresh process per model ({min(warmup, MEMORY_MAX_WARMUP)} warm-up + "
                  f"{min(runs, MEMORY_MAX_RUNS)} runs, {sweep[0]} thread(s)); over baseline = peak minus the peak of a bare "
                  f"onnxruntime process ({base:.1f} MB)")

    if json_path is not None:
        doc = {"schema": "edgequant.bench/1", "machine": machine,
               "input": {"spec": spec, "default": input_spec is None, "synthetic": synthetic,
                         "notes": list(feeds.notes)},
               "session": cfg.to_dict(), "warmup": warmup, "runs": runs, "interleaved": True,
               "memory": ({"baseline_rss_mb": base, "warmup": min(warmup, MEMORY_MAX_WARMUP),
                           "runs": min(runs, MEMORY_MAX_RUNS), "fresh_process": True} if memory else None),
               "models": entries,
               "threads_sweep": sweep_results if threads_sweep else None}
        write_text_atomic(json_path, dumps(doc))
        out.print(f"wrote {json_path}")

