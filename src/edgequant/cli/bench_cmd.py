"""`edgequant bench`: interleaved latency, speedup with a confidence interval, peak memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich import box
from rich.table import Table

from .. import api
from ..fsutil import write_text_atomic
from ..measure.machine import describe_machine
from ..measure.serialize import dumps
from . import cli
from .options import burst_option, min_time_option, threads_option
from .report_view import make_console


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


def _verdict(m: api.BenchModel, first: bool) -> str:
    if first:
        return "reference"
    if m.speedup.faster_than_noise:
        return "[green]faster[/]"
    if m.speedup.slower_than_noise:
        return "[red]slower[/]"
    return "within noise"


def _name_column(table: Table, models: Sequence[api.BenchModel]) -> None:
    """Never truncate or split a model name: the numbers columns give way instead."""
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max(len(m.name) for m in models)


def _table(*columns: str, title: str) -> Table:
    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True)


def _latency_table(title: str, models: Sequence[api.BenchModel]) -> Table:
    table = _table("model", "mean", "std", "min", "max", "p50", "p95", "p99", "runs/s", title=title)
    _name_column(table, models)
    for c in table.columns[1:]:
        c.justify = "right"
    for m in models:
        lat = m.latency
        table.add_row(m.name, *(_ms(v) for v in (lat.mean, lat.std, lat.min, lat.max, lat.p50, lat.p95, lat.p99)),
                      f"{lat.throughput_per_s:.0f}")
    return table


def _speedup_table(models: Sequence[api.BenchModel], threads: int) -> Table:
    table = _table("model", "speedup", "95% CI", "verdict",
                   title=f"speedup vs {models[0].name}, {threads} intra-op thread(s)")
    _name_column(table, models)
    for c in table.columns[1:3]:
        c.justify = "right"
    for i, m in enumerate(models):
        sp = m.speedup
        table.add_row(m.name, f"{sp.ratio:.2f}x", "-" if i == 0 else f"{sp.ci_low:.2f}-{sp.ci_high:.2f}",
                      _verdict(m, i == 0))
    return table


def _size_memory_table(models: Sequence[api.BenchModel], memory: bool) -> Table:
    table = _table("model", "size MB", *(("peak RSS MB", "over baseline MB") if memory else ()),
                   title="size and peak memory" if memory else "size")
    _name_column(table, models)
    for c in table.columns[1:]:
        c.justify = "right"
    for m in models:
        row = [m.name, f"{m.size_bytes / 1e6:.2f}"]
        if memory and m.memory is not None:
            row += [f"{m.memory.peak_rss_mb:.1f}", f"{m.memory.delta_mb:+.1f}"]
        table.add_row(*row)
    return table


def print_bench(res: api.BenchReport) -> None:
    """The terminal form of a bench result: machine, input, one latency (and speedup) table per
    thread count, sizes and peak memory, and how to read them."""
    out = make_console()
    cfg, n = res.session, len(res.models)
    out.print(f"machine: {describe_machine(res.machine)}")
    out.print(f"input: {res.input.spec}" + (" (default)" if res.input.default else "")
              + (" — synthetic data: latency only, accuracy not measured" if res.input.synthetic else ""))
    for note in res.input.notes:
        out.print(f"  note: {note}")
    out.print(f"session: graph-opt {cfg.graph_optimization}, arena {'on' if cfg.enable_mem_arena else 'off'}, "
              f"providers {', '.join(cfg.providers)}; {res.warmup} warm-up + {res.runs} interleaved rounds per model"
              + (f", each a burst of {res.burst} runs in a row, timed after the first (steady state)"
                 if res.burst > 1 else ", one run each (every run right after another model's)" if n > 1 else ""))
    for block in res.sweep:
        out.print(_latency_table(f"latency (ms), {block.threads} intra-op thread(s)", block.models))
        if n > 1:
            out.print(_speedup_table(block.models, block.threads))
    out.print(_size_memory_table(res.models, res.memory is not None))
    if n > 1:
        out.print("speedup = median(first) / median(model), CI = paired bootstrap over rounds; "
                  "'within noise' means the CI includes 1")
    if res.memory is not None:
        mem = res.memory
        out.print(f"peak memory: peak RSS of a fresh process per model ({mem.warmup} warm-up + {mem.runs} runs, "
                  f"{cfg.intra_op_threads} thread(s)); over baseline = peak minus the peak of a bare "
                  f"onnxruntime process ({mem.baseline_rss_mb:.1f} MB)")


@cli.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@threads_option
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
@min_time_option
@burst_option
@click.option("--input", "input_spec", default=None,
              help=f"Input data source; one sample is used (default: {api.DEFAULT_INPUT}, synthetic).")
@click.option("--preprocess", default=None, help="Preprocessing spec when --input is an image folder.")
@click.option("--threads-sweep", callback=_thread_list, default=None, metavar="N,N,...",
              help="Repeat the interleaved benchmark at each intra-op thread count (replaces --threads).")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Peak memory of each model in a fresh process (plus a bare-onnxruntime baseline).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the results as JSON (atomically).")
def bench(models: tuple[Path, ...], threads: int, inter_op: int, graph_opt: str, no_mem_arena: bool,
          no_mem_pattern: bool, execution_mode: str, spinning: bool | None, providers: tuple[str, ...],
          warmup: int, runs: int, min_time: float, input_spec: str | None, preprocess: str | None,
          threads_sweep: list[int] | None, memory: bool, json_path: Path | None, burst: int) -> None:
    """Time MODELS interleaved in one process (A B C, B C A, ...); speedups are relative to the first
    model (median ratio, paired bootstrap 95% CI over rounds)."""
    provider_list = tuple(p.strip() for item in providers for p in item.split(",") if p.strip())
    session = api.SessionConfig(intra_op_threads=threads, inter_op_threads=inter_op, graph_optimization=graph_opt,
                                enable_mem_arena=not no_mem_arena, enable_mem_pattern=not no_mem_pattern,
                                execution_mode=execution_mode, allow_spinning=spinning,
                                providers=provider_list or ("CPUExecutionProvider",))
    with make_console(stderr=True).status("benchmarking") as status:
        res = api.bench(list(models), input=input_spec, warmup=warmup, runs=runs, min_time_s=min_time, session=session,
                        threads_sweep=threads_sweep, memory=memory, preprocess=preprocess, progress=status.update,
                        burst=burst)
    print_bench(res)
    if json_path is not None:
        write_text_atomic(json_path, dumps(res.to_dict()))
        make_console().print(f"wrote {json_path}")
