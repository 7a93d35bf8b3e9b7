"""Quantization recipes on top of ``onnxruntime.quantization``.

Data flow: FP32 model -> prepared copy (opset upgrade, shape inference + ORT optimization with a
fallback) -> dynamic or static quantization -> saved atomically. Nothing here prints: warnings
and notes travel back in :class:`QuantizeResult` for the caller to show.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import onnx

from . import model as model_io
from .errors import EdgequantError
from .fsutil import refuse_overwrite, scratch_cwd
from .qdq.prepare import prepare
from .quiet import quiet_logging
from .quantize_steps import (
    activation_ranges,
    adaround,
    cap_sentinels,
    correct_biases,
    covers_calibration,
    equalize,
    gptq_rounding,
    histogram_overrides,
    keep_coarse_float,
    quantizer_sees,
    range_overrides,
    scoped_config,
    smooth,
    softmax_floor,
    static_shapes,
    with_overrides,
)
from .quantize_config import (  # noqa: F401 - re-exported: callers import these from here
    ACTIVATION_TYPES,
    CALIB_METHODS,
    DYNAMIC_DEFAULT_OPS,
    FORMATS,
    HISTOGRAM_METHODS,
    MODES,
    SLOW_DYNAMIC_OPS,
    WEIGHT_TYPES,
    QuantizeConfig,
)
from .quantize_checks import check_names, config_warnings, quantized_nothing
from .targets import RULES, TargetRule, resolve_target

def make_config(
    mode: str,
    target: str = "auto",
    *,
    quant_format: str | None = None,
    per_channel: bool | None = None,
    reduce_range: bool | None = None,
    activation_type: str | None = None,
    weight_type: str | None = None,
    calib_method: str = "minmax",
    calib_percentile: float = 99.999,
    op_types: tuple[str, ...] | list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    calib_limit: int | None = None,
    fuse_transformer: bool | None = None,
    robust_ranges: bool = True,
    bias_correction: bool = False,
    equalize: bool = False,
    equalize_relu6: bool = False,
    smooth_quant: bool = False,
    adaround: bool = False,
    gptq: bool = False,
    extra_options: dict | None = None,
) -> QuantizeConfig:
    """Target rule defaults, overridden by whatever the caller set explicitly (None = rule)."""
    if mode not in MODES:
        raise EdgequantError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    rule: TargetRule = resolve_target(target)
    fmt = quant_format or rule.quant_format
    act = activation_type or rule.activation_type
    wt = weight_type or rule.weight_type
    for value, allowed, what in ((fmt, FORMATS, "format"), (act, ACTIVATION_TYPES, "activation type"),
                                 (wt, WEIGHT_TYPES, "weight type"), (calib_method, CALIB_METHODS, "calibration method")):
        if value not in allowed:
            raise EdgequantError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    if not 0.0 < calib_percentile <= 100.0:
        raise EdgequantError(f"calibration percentile must be in (0, 100], got {calib_percentile:g}")
    if rule.name == "qnn" and fmt != "qdq":
        raise EdgequantError("target qnn needs --format qdq (QNN HTP consumes QDQ graphs)")
    if mode == "dynamic" and (equalize or equalize_relu6 or adaround or calib_method == "mse"):
        raise EdgequantError("--equalize, --adaround and --calib-method mse need --mode static")
    if mode == "static" and adaround and fmt != "qdq":
        raise EdgequantError("--adaround needs --format qdq (it rewrites the QDQ model's integer weights)")
    if gptq and adaround:
        raise EdgequantError("--gptq and --adaround both choose the weights' rounding: pick one")
    if mode == "static" and gptq and fmt != "qdq":
        raise EdgequantError("--gptq needs --format qdq in static mode (it rewrites the QDQ model's integer weights)")
    if mode == "static" and calib_method == "mse" and fmt != "qdq":
        raise EdgequantError("--calib-method mse needs --format qdq (its ranges are QDQ tensor overrides)")
    if mode == "static" and act in ("uint16", "int16") and fmt == "qoperator":
        raise EdgequantError("16-bit activations need --format qdq (QOperator kernels are 8-bit)")
    if mode == "static" and fuse_transformer is not None:
        raise EdgequantError("--fuse-transformer/--no-fuse-transformer apply to --mode dynamic")
    if mode == "dynamic" and act != rule.activation_type and activation_type is not None:
        raise EdgequantError("--activation-type does not apply to dynamic mode (activations are quantized to uint8 at run time)")
    rr = rule.reduce_range if reduce_range is None else reduce_range
    if rr and (wt not in ("int8", "uint8")):
        rr = False
    ops = tuple(op_types) if op_types else (DYNAMIC_DEFAULT_OPS if mode == "dynamic" else None)
    return QuantizeConfig(
        mode=mode, target=rule.name, quant_format=fmt if mode == "static" else "qoperator",
        per_channel=rule.per_channel if per_channel is None else per_channel,
        reduce_range=rr, activation_type=act if mode == "static" else "uint8", weight_type=wt,
        calib_method=calib_method, calib_percentile=calib_percentile, op_types=ops,
        exclude=tuple(exclude), weight_symmetric=rule.weight_symmetric, calib_limit=calib_limit,
        fuse_transformer=fuse_transformer, robust_ranges=robust_ranges, bias_correction=bias_correction,
        equalize=equalize or equalize_relu6, equalize_relu6=equalize_relu6, smooth_quant=smooth_quant,
        adaround=adaround, gptq=gptq, extra_options=dict(extra_options or {}))


@dataclass
class QuantizeResult:
    path: Path
    config: QuantizeConfig
    input_size_bytes: int
    output_size_bytes: int
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float:
        return self.input_size_bytes / max(self.output_size_bytes, 1)


# ---- recipes -------------------------------------------------------------------------------

def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8,
            "int16": QuantType.QInt16, "uint16": QuantType.QUInt16}[name]


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution,
            "mse": CalibrationMethod.MinMax}[name]   # mse: MinMax, every searched range given as an override


def _ort_op_types(config: QuantizeConfig) -> list[str] | None:
    if config.op_types is None:
        return None
    # Gemm was rewritten to MatMul for dynamic mode; ORT ignores op types it cannot quantize.
    return [op for op in config.op_types if not (config.mode == "dynamic" and op == "Gemm")] or None


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    """Attention blocks: Softmax between MatMuls, plus LayerNorm (fused op or ReduceMean form)."""
    ops = [n.op_type for n in model.graph.node]
    has_norm = "LayerNormalization" in ops or ops.count("ReduceMean") >= 2
    return "Softmax" in ops and ops.count("MatMul") >= 4 and has_norm


def _run_dynamic(src: Path, out: Path, config: QuantizeConfig, notes: list[str], timing_feeds=None,
                 rounding: Callable[[Path, Path], str] | None = None) -> None:
    """Dynamic INT8 of ``src`` into ``out``; ``rounding(float_model, quantized)`` rewrites the
    quantized weights in place (GPTQ) given the FP32 graph the quantizer saw, and says what it did."""
    from onnxruntime.quantization import quantize_dynamic

    fuse = config.fuse_transformer
    if fuse or looks_like_transformer(onnx.load(str(src), load_external_data=False)):
        # Fused (Attention/SkipLayerNorm/Gelu -> QAttention/DynamicQuantizeMatMul, few boundaries)
        # or not (float glue around quantized MatMuls), with or without onnxruntime's own
        # SkipLayerNormalization: which is faster depends on the CPU and the runtime, so each
        # alternative the config allows is built and timed (qdq.transformers.quantize_encoder_dynamic).
        from .qdq.transformers import quantize_encoder_dynamic

        default_ops = config.op_types in (None, DYNAMIC_DEFAULT_OPS)
        with scratch_cwd(out.parent):  # the optimizer's shape inference writes into the cwd
            made = quantize_encoder_dynamic(
                src.resolve(), out.resolve(), fuse=fuse, feeds=timing_feeds, per_channel=config.per_channel,
                reduce_range=config.reduce_range, weight_type=_qtype(config.weight_type),
                nodes_to_exclude=list(config.exclude) or None,
                op_types=None if default_ops else _ort_op_types(config), refine=rounding)
        notes.append("transformer encoder: " + "; ".join(made.summary.passes))
        notes.extend(made.summary.warnings)
        return

    from .measure.coverage import BODY_FLOAT_NOTE
    from .qdq.subgraphs import add_missing_domains, bodies_with_compute, toposort

    extra = {"MatMulConstBOnly": True, **config.extra_options}
    bodies = "EnableSubgraph" not in extra and bool(bodies_with_compute(onnx.load(str(src), load_external_data=False)))
    if bodies:   # ORT leaves If/Loop/Scan bodies float unless asked (prepare folded their weights)
        extra["EnableSubgraph"] = True

    def run(options: dict) -> None:
        quantize_dynamic(str(src), str(out), op_types_to_quantize=_ort_op_types(config),
                         per_channel=config.per_channel, reduce_range=config.reduce_range,
                         weight_type=_qtype(config.weight_type), nodes_to_exclude=list(config.exclude),
                         use_external_data_format=model_io.is_large(src), extra_options=options)
    try:
        run(dict(extra))
    except Exception as exc:  # noqa: BLE001 - ORT's subgraph pass is less used: the top level still counts
        if not bodies:
            raise
        notes.append(f"{BODY_FLOAT_NOTE}compute stays float: onnxruntime's subgraph quantization failed: "
                     + " ".join(str(exc).split())[:200])
        run({**extra, "EnableSubgraph": False})
        bodies = False    # the top level alone: nothing to declare or reorder, but still rounded below
    if bodies:    # ORT's subgraph pass declares domains and orders nodes for the top level only
        quantized = onnx.load(str(out))
        add_missing_domains(quantized)
        toposort(quantized.graph)
        onnx.save(quantized, str(out))
    if rounding is not None:
        notes.append(rounding(src, out))


def _streams(config: QuantizeConfig, model_path: Path) -> bool:
    """Whether a model over 2 GiB goes through :mod:`edgequant.qdq.streaming` (onnxruntime's quantizer
    holds 3.3x its weights): dynamic, and static QDQ on CPU targets. The FP32 graph passes and
    learned rounding would load every weight, so they are refused there rather than run at that cost."""
    if config.mode == "static" and (config.quant_format != "qdq" or config.target == "qnn"):
        return False
    asked = [flag for flag, on in (("--equalize", config.equalize), ("--smooth-quant", config.smooth_quant),
                                   ("--adaround", config.adaround), ("--gptq", config.gptq),
                                   ("--bias-correction", config.bias_correction),
                                   ("--calib-method mse", config.calib_method == "mse")) if on]
    if asked:
        raise EdgequantError(f"{model_path}: {', '.join(asked)} not supported on a model over 2 GiB "
                             "(its weights are streamed from disk, never loaded whole)")
    return True


def _run_streaming(src: Path, out: Path, config: QuantizeConfig, calibration, notes: list[str],
                   model_path: Path) -> None:
    from .qdq.streaming import activation_inputs, quantize_streaming

    ranges = None
    if config.mode == "static":
        ranges = activation_ranges(src, config, calibration, activation_inputs(src, config), notes)
    summary = quantize_streaming(src, out, config, ranges=ranges, inputs=(model_path,))
    notes.append(summary.describe())
    notes.extend(f"{name} stays float: {why}" for name, why in summary.float_nodes.items())


def _static_extra_options(config: QuantizeConfig, opset: int) -> dict:
    extra: dict = {
        "WeightSymmetric": config.weight_symmetric,
        "ActivationSymmetric": config.activation_symmetric,
    }
    # Not CalibMaxIntermediateOutputs: in ORT 1.32 MinMaxCalibrater drops each full chunk
    # without folding its ranges in, so only the last partial chunk would be calibrated.
    # ORT keeps all samples' activations until the end instead; calib_limit bounds that.
    if config.calib_method == "percentile":
        extra["CalibPercentile"] = config.calib_percentile
    if config.activation_type in ("uint16", "int16") and opset < 21:
        extra["UseQDQContribOps"] = True  # 16-bit Q/DQ in the ONNX domain needs opset 21
    extra.update(config.extra_options)
    return extra


def _run_static(src: Path, out: Path, config: QuantizeConfig, reader, notes: list[str], calibration=None,
                on_sample: Callable[[int], None] | None = None) -> None:
    from onnxruntime.quantization import QuantFormat, quantize, quantize_static

    config = scoped_config(config, src)   # a branch's overrides reach its own quantizer (_static_bodies)
    method = config.calib_method
    histograms = method in HISTOGRAM_METHODS and calibration is not None
    if histograms:
        ranges = histogram_overrides(src, config, calibration, notes, on_sample)
    else:
        ranges = range_overrides(src, config, calibration, notes, on_sample) if calibration is not None else {}
    # every calibrated tensor overridden: ORT's own min/max pass would only repeat ours, on one sample
    if histograms or covers_calibration(src, config, ranges):
        from .data import calibration_reader

        reader, method = calibration_reader(calibration, limit=1), "minmax"
    if calibration is not None:   # every target: an attention mask must not set the scores' step
        ranges = cap_sentinels(softmax_floor(src, calibration, ranges, notes), notes)
    if config.target == "qnn":
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        qnn_config = get_qnn_qdq_config(
            str(src), reader, calibrate_method=_calib_method(method),
            activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
            per_channel=config.per_channel, weight_symmetric=True,
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
            nodes_to_exclude=list(config.exclude) or None)
        # the recipe's own overrides (16-bit tensors) and robust ranges go to the QNN config too;
        # HTP's own op rules fill in what neither set (qdq.htp_rules)
        from .qdq.htp_rules import weight_overrides

        qnn_config.extra_options = quantizer_sees(with_overrides(with_overrides(with_overrides(
            qnn_config.extra_options, config.extra_options.get("TensorQuantOverrides") or {}), ranges),
            weight_overrides(onnx.load(str(src), load_external_data=False))), src)
        quantize(str(src), str(out), qnn_config)
        return
    opset = model_io.default_opset(onnx.load(str(src), load_external_data=False))
    extra = quantizer_sees(with_overrides(_static_extra_options(config, opset), ranges), src)
    if config.quant_format == "qdq":
        # QDQ placement decides whether ORT's fusions fire: this recipe also verifies coverage
        # on ORT's optimized graph and explains every compute op left in float.
        from .qdq import quantize_static_optimized

        summary = quantize_static_optimized(src, out, reader, prepared=True,
                                            **static_qdq_kwargs(config, extra, calib_method=method))
        notes.extend(f"{name} stays float: {why}" for name, why in summary.float_compute_nodes.items())
        notes.extend(summary.warnings)
        return
    quantize_static(
        str(src), str(out), calibration_data_reader=reader, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=list(config.op_types) if config.op_types else None,
        per_channel=config.per_channel, reduce_range=config.reduce_range,
        activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
        nodes_to_exclude=list(config.exclude), calibrate_method=_calib_method(method),
        extra_options=extra)


def static_qdq_kwargs(config: QuantizeConfig, extra: dict | None = None, *, calib_method: str | None = None) -> dict:
    """``quantize_static_optimized`` keyword arguments for ``config`` (shared with selective).

    ``extra`` defaults to the ORT options this config implies at opset 13 (selective prepares
    the model itself); ``calib_method`` replaces the config's (ranges already overridden)."""
    if extra is None:
        extra = _static_extra_options(config, 13)
    return dict(per_channel=config.per_channel, reduce_range=config.reduce_range,
                activations_to_uint8=config.activations_to_uint8, target=config.target,
                activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
                calibrate_method=_calib_method(calib_method or config.calib_method),
                nodes_to_exclude=list(config.exclude) or None,
                op_types=list(config.op_types) if config.op_types else None, extra_options=extra)


def _static_bodies(prepared: Path, qpath: Path, config: QuantizeConfig, calibration, notes: list[str],
                   work: Path) -> Path:
    """Static INT8 inside If branches (:mod:`edgequant.qdq.subgraph_static`): this recipe per branch,
    calibrated on the samples that take it; the notes name every body left float and why."""
    from .qdq.recipe import FLOAT_AFTER_OPT, IN_BODY
    from .qdq.subgraphs import bodies_with_compute

    if not bodies_with_compute(onnx.load(str(prepared), load_external_data=False)):
        return qpath
    from .data import calibration_reader
    from .devices import analysis_cpu
    from .qdq.subgraph_static import quantize_if_bodies

    def body(src: Path, dst: Path, source, body_notes: list[str]) -> None:
        scoped = scoped_config(config, src, enclosing=True)
        _run_static(src, dst, scoped, calibration_reader(source), body_notes, source)

    device = analysis_cpu()
    out, report = quantize_if_bodies(prepared, qpath, work / "bodies.onnx", calibration, body,
                                     device=device, work=work)
    # the top-level recipe's per-node and overall float notes predate the bodies: replaced
    notes[:] = [n for n in notes if not n.endswith(IN_BODY) and not (report.quantized and FLOAT_AFTER_OPT in n)]
    notes.extend(report.describe())
    if report.quantized:
        cov = device.coverage(out)
        notes.append(f"with the quantized If branches: {cov.quantized_compute_ops} of {cov.compute_ops} compute ops "
                     "run as INT8 kernels (bodies included)")
    return out


def quantize_model(
    model_path: str | Path,
    out_path: str | Path,
    config: QuantizeConfig,
    calibration=None,
    *,
    on_calib_sample: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model_path`` to ``out_path`` with ``config``.

    ``calibration`` is a :class:`edgequant.data.DataSource` (required for static mode; in dynamic
    mode its first sample only feeds the timing of alternative graphs). The output is written
    atomically; the input is never touched.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    refuse_overwrite(out_path, model_path)
    if config.mode == "static" and calibration is None:
        raise EdgequantError(f"{model_path}: static quantization needs calibration data (--calib SRC)")
    if config.smooth_quant and calibration is None:
        raise EdgequantError(f"{model_path}: --smooth-quant needs calibration data (--calib SRC): it measures "
                             "the activations' channel ranges")
    if config.gptq and calibration is None:
        raise EdgequantError(f"{model_path}: --gptq needs calibration data (--calib SRC): it rounds the weights "
                             "for the layers' inputs on it")
    warnings, notes = config_warnings(config), []
    if calibration is not None and calibration.synthetic and config.mode == "static":
        warnings.append("calibrating on synthetic random data: activation ranges will not match real inputs")
    with tempfile.TemporaryDirectory(prefix="edgequant-") as tmp:
        work = Path(tmp)
        source = static_shapes(model_path, calibration, work, notes) if config.target == "qnn" else model_path
        with quiet_logging():      # ORT's pre-processing session warns about what it folds away
            prep = prepare(source, work, mode=config.mode, per_channel=config.per_channel,
                           gemm_to_matmul=config.mode == "dynamic" and "Gemm" in (config.op_types or ()),
                           target=config.target)
        notes.extend([*prep.notes, *prep.warnings])
        prepared = prep.path
        check_names(model_path, config, prepared)
        raw_out = work / "quantized.onnx"
        streamed = model_io.is_large(prepared) and _streams(config, model_path)
        try:
            with quiet_logging():  # ORT's quantizer warns on the root logger; our notes say what matters
                if streamed:       # over 2 GiB: weights from disk straight into out_path's data file
                    _run_streaming(prepared, out_path, config, calibration, notes, model_path)
                elif config.mode == "dynamic":
                    if config.smooth_quant:
                        prepared = smooth(prepared, calibration, notes, config)
                    # otherwise data only feeds the timing of alternative graphs (real shapes)
                    feeds = next(iter(calibration)).feeds if calibration is not None else None
                    rounding = partial(gptq_rounding, calibration=calibration) if config.gptq else None
                    _run_dynamic(prepared, raw_out, config, notes, feeds, rounding)
                else:
                    from .data import calibration_reader

                    if config.equalize:           # exact FP32 rewrites first, so the ranges see the final graph
                        prepared = equalize(prepared, config, calibration, notes)
                    if config.smooth_quant:
                        prepared = smooth(prepared, calibration, notes, config)
                    reader = calibration_reader(calibration, on_sample=on_calib_sample)
                    _run_static(prepared, raw_out, config, reader, notes, calibration, on_calib_sample)
                    if config.quant_format == "qdq" and RULES[config.target].float_fallback:
                        raw_out = keep_coarse_float(prepared, raw_out, calibration, notes)
                    if config.adaround and config.quant_format == "qdq":   # before: bias correction sees its rounding
                        raw_out = adaround(prepared, raw_out, calibration, notes)
                    if config.gptq and config.quant_format == "qdq":
                        notes.append(gptq_rounding(prepared, raw_out, calibration))
                    if config.bias_correction and config.quant_format == "qdq":
                        raw_out = correct_biases(prepared, raw_out, calibration, notes)
                    if config.target != "qnn":    # QNN's HTP runs no If: its bodies stay on the CPU
                        raw_out = _static_bodies(prepared, raw_out, config, calibration, notes, work)
        except EdgequantError:
            raise
        except Exception as exc:  # noqa: BLE001 - surface ORT's reason in one line
            msg = " ".join(str(exc).split())[:300]
            raise EdgequantError(f"{model_path}: {config.mode} quantization failed: {type(exc).__name__}: {msg}") from exc
        if not streamed:
            quantized = model_io.load_model(raw_out)
            model_io.save_model(quantized, out_path, inputs=(model_path,))
    if quantized_nothing(out_path):
        warnings.append(f"nothing was quantized: no {'/'.join(config.op_types or ('compute',))} op of this model "
                        "could be quantized in " + config.mode + " mode"
                        + ("; convolutional models need --mode static (with --calib)" if config.mode == "dynamic" else ""))
    return QuantizeResult(path=out_path, config=config,
                          input_size_bytes=model_io.model_size_bytes(model_path),
                          output_size_bytes=model_io.model_size_bytes(out_path),
                          warnings=warnings, notes=notes)
