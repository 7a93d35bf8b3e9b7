"""`edgequant quantize`: one model, one recipe, written atomically."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import api
from ..quantize import ACTIVATION_TYPES, CALIB_METHODS, FORMATS, WEIGHT_TYPES
from ..targets import TARGETS
from . import cli
from .report_view import make_console


def _split_ops(value: str | None) -> tuple[str, ...] | None:
    return tuple(op.strip() for op in value.split(",") if op.strip()) if value else None


@cli.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output .onnx path, or a folder (then MODEL.<mode>.onnx inside).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write what was done (paths, sizes, config, warnings, notes) as JSON (atomically).")
@click.option("--mode", type=click.Choice(["dynamic", "static"]), required=True)
@click.option("--calib", "calib", default=None, help="Calibration data source (static mode); in dynamic mode "
              "optional: its first sample times the alternative graphs (e.g. real padded token inputs).")
@click.option("--preprocess", default=None, help="Preprocessing spec for an image-folder source.")
@click.option("--calib-limit", type=click.IntRange(min=1), default=None, help="Use at most N calibration samples.")
@click.option("--target", type=click.Choice(["auto", *TARGETS]), default="auto", show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Static format (default: target rule, qdq).")
@click.option("--per-channel/--no-per-channel", default=None, help="Default: target rule.")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights (default: target rule).")
@click.option("--activation-type", type=click.Choice(ACTIVATION_TYPES), default=None)
@click.option("--weight-type", type=click.Choice(WEIGHT_TYPES), default=None)
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="minmax", show_default=True,
              help="Activation ranges. mse: per tensor, the shrink of the (robust) min/max range that minimizes "
                   "the tensor's quantization MSE on the calibration data (QDQ only).")
@click.option("--percentile", type=click.FloatRange(90.0, 100.0), default=99.999, show_default=True,
              help="Percentile for --calib-method percentile.")
@click.option("--robust-ranges/--no-robust-ranges", default=True, show_default=True,
              help="Static minmax: where a few calibration samples stretch a tensor's range, use the 90th "
                   "percentile of per-sample extremes (those samples saturate).")
@click.option("--bias-correction", is_flag=True,
              help="Static QDQ: fold each layer's mean per-channel output error on the calibration data into its bias.")
@click.option("--equalize", is_flag=True,
              help="Static: cross-layer equalization of Conv -> Conv pairs (through Relu/PRelu/pools; exact) "
                   "before quantizing; helps most with --no-per-channel.")
@click.option("--equalize-relu6", is_flag=True,
              help="--equalize also through Clip(0, 6), replacing it by Relu (not exact; the change is reported).")
@click.option("--smooth-quant", is_flag=True,
              help="SmoothQuant migration of MatMul/Gemm input outlier channels into the weights (exact; needs "
                   "--calib; strength chosen per activation by its readers' simulated INT8 error). Static: folded "
                   "into LayerNorm or the previous linear layer; dynamic: also one Mul where the producer cannot "
                   "take it (post-LN residuals, GELU outputs).")
@click.option("--adaround", is_flag=True,
              help="Static QDQ: learned weight rounding (AdaRound): each Conv/Gemm/MatMul weight rounds up or down "
                   "as best reconstructs the layer's FP32 output on the calibration data (slower: seconds to "
                   "minutes per model); runs before --bias-correction.")
@click.option("--gptq", is_flag=True,
              help="Error-compensating weight rounding (GPTQ), dynamic or static QDQ: each weight row's rounding "
                   "error is absorbed by the rows not yet rounded, as best keeps the layer's FP32 output on the "
                   "calibration data (needs --calib; same grid and kernels; seconds per layer).")
@click.option("--fuse-transformer/--no-fuse-transformer", default=None,
              help="Dynamic, transformer encoders: fuse with onnxruntime's transformer optimizer first, or not. "
                   "Default: build both and keep the faster in a quick interleaved timing (1 thread).")
@click.option("--exclude", multiple=True, help="Node name to keep in float (repeatable).")
@click.option("--op-types", default=None, help="Comma-separated op types to quantize.")
@click.option("--export-context", is_flag=True,
              help="Target qnn: also write OUT's QNN EPContext model (OUT stem + '_ctx.onnx', the HTP binary "
                   "embedded) and check it gives the same outputs as OUT on HTP.")
def quantize(model: Path, out: Path, force: bool, json_path: Path | None, mode: str, calib: str | None, preprocess: str | None, calib_limit: int | None,
             target: str, fmt: str | None, per_channel: bool | None, reduce_range: bool | None,
             activation_type: str | None, weight_type: str | None, calib_method: str, percentile: float,
             robust_ranges: bool, bias_correction: bool, equalize: bool, equalize_relu6: bool, smooth_quant: bool,
             adaround: bool, gptq: bool, fuse_transformer: bool | None, exclude: tuple[str, ...], op_types: str | None,
             export_context: bool) -> None:
    """Quantize MODEL to INT8 (dynamic: weights only; static: weights and activations)."""
    if mode == "static" and not calib:
        raise click.UsageError("--mode static needs --calib SRC")
    if export_context and (target != "qnn" or mode != "static"):
        raise click.UsageError("--export-context needs --target qnn --mode static")
    err = make_console(stderr=True)
    with Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=mode != "static") as progress:
        task = progress.add_task("calib", total=None)
        result = api.quantize(
            model, out, mode=mode, calib=calib, target=target, preprocess=preprocess, calib_limit=calib_limit,
            on_calib_sample=lambda done, total: progress.update(task, completed=done, total=total),
            quant_format=fmt, per_channel=per_channel, reduce_range=reduce_range, activation_type=activation_type,
            weight_type=weight_type, calib_method=calib_method, calib_percentile=percentile,
            op_types=_split_ops(op_types), exclude=exclude, robust_ranges=robust_ranges, bias_correction=bias_correction,
            equalize=equalize, equalize_relu6=equalize_relu6, smooth_quant=smooth_quant, adaround=adaround,
            gptq=gptq, fuse_transformer=fuse_transformer, force=force)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    for n in result.notes:
        err.print(f"[dim]note: {n}[/]")
    config = result.config
    make_console().print(
        f"wrote {result.path}  {result.input_size_bytes / 1e6:.2f} MB -> {result.output_size_bytes / 1e6:.2f} MB "
        f"({result.compression:.2f}x smaller)  mode={config.mode} target={config.target} "
        f"format={config.quant_format} per_channel={config.per_channel} reduce_range={config.reduce_range} "
        f"A={config.activation_type} W={config.weight_type}")
    if json_path is not None:
        import json

        from ..fsutil import write_text_atomic

        doc = {"schema": "edgequant.quantize/1", "model": str(model), "output": str(result.path),
               "input_size_bytes": result.input_size_bytes, "output_size_bytes": result.output_size_bytes,
               "compression": result.compression, "config": config.to_dict(), "warnings": list(result.warnings),
               "notes": list(result.notes)}
        write_text_atomic(json_path, json.dumps(doc, indent=2, default=str) + "\n")
    if export_context:
        ctx = api.export_context(result.path, result.path.with_name(result.path.stem + "_ctx.onnx"), check_data=calib)
        make_console().print(f"wrote {ctx}  QNN EPContext model ({ctx.stat().st_size / 1e6:.2f} MB); "
                             "same outputs as the QDQ model on HTP")
