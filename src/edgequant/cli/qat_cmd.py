"""`edgequant qat`: quantization-aware training from the ONNX file alone (distillation from FP32)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .. import api
from ..targets import TARGETS
from . import cli
from .report_view import make_console


def _fmt(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{entry['value']:.4g} (FP32 {entry['reference_value']:.4g})"


@cli.command("qat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", required=True, help="Calibration samples (unlabeled): PTQ ranges and the training set.")
@click.option("--eval", "eval_spec", default=None,
              help="Evaluation data: the running metric and the before/after comparison (default: a held-out "
                   "part of --calib).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: reports/<model name>-qat): model.int8.onnx, model.ptq.onnx, qat.json.")
@click.option("--target", type=click.Choice(["auto", *TARGETS]), default="auto", show_default=True)
@click.option("--per-channel/--per-tensor", "per_channel", default=None,
              help="Weight scales per output channel or one per tensor (default: target rule).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--time-budget", type=click.FloatRange(min=0), default=None,
              help="Stop training after MIN minutes (the best epoch so far is kept).")
@click.option("--metric", default=None, help="Task metric for the running metric and the record: top1 or module:function.")
@click.option("--preprocess", default=None, help="Preprocessing spec for image-folder sources.")
@click.option("--calib-limit", type=click.IntRange(min=1), default=None, help="Use at most N calibration samples.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True,
              help="Adam learning rate, in weight quantization steps (activation scales: lr/10, relative).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch and onnxruntime threads (0: their defaults).")
@click.option("--force", is_flag=True, help="Replace an existing model.int8.onnx in the output folder.")
def qat(model: Path, calib: str, eval_spec: str | None, out: Path | None, target: str, per_channel: bool | None,
        epochs: int, time_budget: float | None, metric: str | None, preprocess: str | None, calib_limit: int | None,
        eval_limit: int | None, lr: float, batch_size: int, threads: int, force: bool) -> None:
    """Quantization-aware training of MODEL: start from the target's static QDQ model, learn the FP32
    model's outputs on the calibration samples (no labels, no training code), export QDQ ONNX."""
    out = out or Path("reports") / f"{model.stem}-qat"
    err = make_console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def show(msg: str) -> None:
            if msg.startswith("epoch "):
                progress.console.print(msg)
            progress.update(task, description=msg)

        record = api.qat(model, out, calib=calib, eval=eval_spec, target=target, per_channel=per_channel,
                         epochs=epochs, time_budget_min=time_budget, metric=metric, preprocess=preprocess,
                         calib_limit=calib_limit, eval_limit=eval_limit, lr=lr, batch_size=batch_size,
                         threads=threads, force=force, progress=show)
    console = make_console()
    fid = record["fidelity"]
    console.print(f"trained {record['epochs_run']} epoch(s), {record['steps']} steps in {record['train_time_s']:.0f}s "
                  f"({record['stopped_by']}); kept epoch {record['best_epoch']}")
    for name, before in fid["ptq"]["per_output_sqnr_db"].items():
        console.print(f"SQNR vs FP32 of {name} on {record['judged_on']}: PTQ {before:.2f} dB -> "
                      f"QAT {fid['qat']['per_output_sqnr_db'][name]:.2f} dB")
    if record["accuracy"]:
        acc = record["accuracy"]
        console.print(f"{acc['qat']['metric']}: PTQ {_fmt(acc['ptq'])} -> QAT {_fmt(acc['qat'])}")
    for name, v in record["export_check"].items():
        if v["max_steps"] is not None:
            console.print(f"export check {name}: onnxruntime vs torch fake-quant: {v['within_one_step']:.2%} of "
                          f"values within one output step, at most {v['max_steps']:.3g} step(s)")
    console.print(f"wrote {record['files']['qat']} and {out / 'qat.json'}")
