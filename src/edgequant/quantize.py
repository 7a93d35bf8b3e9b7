"""Quantization recipes on top of ``onnxruntime.quantization``.

Data flow: FP32 model -> prepared copy (opset upgrade, shape inference + ORT optimization with a
fallback) -> dynamic or static quantization -> saved atomically. Nothing here prints: warnings
and notes travel back in :class:`QuantizeResult` for the caller to show.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from . import model as model_io
from .errors import EdgequantError
from .fsutil import refuse_overwrite
from .targets import RULES, TargetRule, resolve_target

MODES = ("dynamic", "static")
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIB_METHODS = ("minmax", "entropy", "percentile", "distribution")
# Dynamic quantization of Conv (ConvInteger) has no fast x86/ARM kernel in ORT: 4-10x slower than FP32.
DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm")
SLOW_DYNAMIC_OPS = {"Conv": "ConvInteger has no fast kernel in onnxruntime's CPU provider; "
                            "dynamic Conv typically runs 4-10x slower than FP32"}


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides the quantized model; recorded verbatim in reports."""

    mode: str
    target: str
    quant_format: str
    per_channel: bool
    reduce_range: bool
    activation_type: str
    weight_type: str
    calib_method: str = "minmax"
    calib_percentile: float = 99.999
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    calib_limit: int | None = None
    extra_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types) if self.op_types is not None else None
        d["exclude"] = list(self.exclude)
        return d


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
    if rule.name == "qnn" and fmt != "qdq":
        raise EdgequantError("target qnn needs --format qdq (QNN HTP consumes QDQ graphs)")
    if mode == "static" and act in ("uint16", "int16") and fmt == "qoperator":
        raise EdgequantError("16-bit activations need --format qdq (QOperator kernels are 8-bit)")
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
        extra_options=dict(extra_options or {}))


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


def config_warnings(config: QuantizeConfig) -> list[str]:
    """Known-bad choices worth telling the user before they measure it themselves."""
    out = []
    if config.mode == "dynamic":
        for op in config.op_types or ():
            if op in SLOW_DYNAMIC_OPS:
                out.append(f"dynamic {op}: {SLOW_DYNAMIC_OPS[op]}")
    rule = RULES[config.target]
    if (config.target == "x86-avx2" and not config.reduce_range and config.weight_type == "int8"
            and config.activation_type == "uint8"):
        out.append("U8S8 without reduce_range on x86 without VNNI can saturate (VPMADDUBSW); "
                   f"rule for {rule.name}: {rule.why}")
    return out


# ---- preparation ---------------------------------------------------------------------------

def _gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite plain Gemm (alpha=beta=1, no transA) as MatMul + Add so dynamic quantization,
    whose integer-op registry has no Gemm, still covers fully connected layers."""
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or node.input[1] not in inits):
            new_nodes.append(node)
            continue
        b_name = node.input[1]
        if attrs.get("transB", 0):
            b = numpy_helper.to_array(inits[b_name]).T.copy()
            b_name = b_name + "_transposed"
            model.graph.initializer.append(numpy_helper.from_array(b, b_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return rewritten


def prepare_model(model_path: Path, work: Path, config: QuantizeConfig, notes: list[str]) -> Path:
    """The quantizer-ready copy of the model (exact FP32 rewrites, opset, Gemm rewrite, ORT
    pre-processing) under ``work``."""
    from .rewrites import apply_exact_rewrites

    model = model_io.load_model(model_path)
    notes.extend(apply_exact_rewrites(model))
    min_opset = 13 if (config.per_channel or config.mode == "static") else 11
    opset = model_io.default_opset(model)
    if opset < min_opset:
        model = model_io.upgrade_opset(model, min_opset, path=model_path)
        notes.append(f"opset upgraded {opset} -> {min_opset} (per-channel DequantizeLinear needs >= 13)")
    if config.mode == "dynamic" and "Gemm" in (config.op_types or ()):
        n = _gemm_to_matmul(model)
        if n:
            notes.append(f"{n} Gemm rewritten as MatMul+Add for dynamic quantization")
    staged = work / "staged.onnx"
    onnx.save_model(model, str(staged))
    from .qdq.prepare import preprocess

    passes: list[str] = []
    return preprocess(staged, work / "prepared.onnx", passes, notes, optimize=config.mode == "static")


# ---- recipes -------------------------------------------------------------------------------

def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8,
            "int16": QuantType.QInt16, "uint16": QuantType.QUInt16}[name]


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}[name]


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


def _run_dynamic(src: Path, out: Path, config: QuantizeConfig, notes: list[str]) -> None:
    from onnxruntime.quantization import quantize_dynamic

    fuse = config.extra_options.get("FuseTransformer", "auto")
    if fuse is True or (fuse == "auto" and looks_like_transformer(onnx.load(str(src), load_external_data=False))):
        # Fused Attention/SkipLayerNorm/Gelu become QAttention/DynamicQuantizeMatMul with few
        # boundaries; unfused, the encoder is mostly float glue around quantized MatMuls.
        from .qdq.transformers import quantize_transformer_dynamic

        default_ops = config.op_types in (None, DYNAMIC_DEFAULT_OPS)
        summary = quantize_transformer_dynamic(
            src, out, per_channel=config.per_channel, reduce_range=config.reduce_range,
            weight_type=_qtype(config.weight_type), nodes_to_exclude=list(config.exclude) or None,
            op_types=None if default_ops else _ort_op_types(config))
        notes.append("transformer encoder: " + "; ".join(summary.passes))
        notes.extend(summary.warnings)
        return

    extra = {"MatMulConstBOnly": True, **{k: v for k, v in config.extra_options.items() if k != "FuseTransformer"}}
    quantize_dynamic(str(src), str(out), op_types_to_quantize=_ort_op_types(config),
                     per_channel=config.per_channel, reduce_range=config.reduce_range,
                     weight_type=_qtype(config.weight_type), nodes_to_exclude=list(config.exclude),
                     extra_options=extra)


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


def _run_static(src: Path, out: Path, config: QuantizeConfig, reader, notes: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, quantize, quantize_static

    if config.target == "qnn":
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        qnn_config = get_qnn_qdq_config(
            str(src), reader, calibrate_method=_calib_method(config.calib_method),
            activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
            per_channel=config.per_channel, weight_symmetric=True,
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
            nodes_to_exclude=list(config.exclude) or None)
        quantize(str(src), str(out), qnn_config)
        return
    opset = model_io.default_opset(onnx.load(str(src), load_external_data=False))
    extra = _static_extra_options(config, opset)
    if config.quant_format == "qdq":
        # QDQ placement decides whether ORT's fusions fire: this recipe also verifies coverage
        # on ORT's optimized graph and explains every compute op left in float.
        from .qdq import quantize_static_optimized
        from .qdq.recipe import S8_TO_U8_KEY

        # ORT's x86 fusions need uint8 activations; other targets keep what was asked for,
        # whatever machine this runs on.
        extra.setdefault(S8_TO_U8_KEY, config.target.startswith("x86"))

        summary = quantize_static_optimized(src, out, reader, prepared=True, **static_qdq_kwargs(config, extra))
        notes.extend(f"{name} stays float: {why}" for name, why in summary.float_compute_nodes.items())
        notes.extend(w for w in summary.warnings if "VPMADDUBSW" not in w)  # config_warnings says it already
        return
    quantize_static(
        str(src), str(out), calibration_data_reader=reader, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=list(config.op_types) if config.op_types else None,
        per_channel=config.per_channel, reduce_range=config.reduce_range,
        activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
        nodes_to_exclude=list(config.exclude), calibrate_method=_calib_method(config.calib_method),
        extra_options=extra)


def static_qdq_kwargs(config: QuantizeConfig, extra: dict) -> dict:
    """``quantize_static_optimized`` keyword arguments for ``config`` (shared with selective)."""
    return dict(per_channel=config.per_channel, reduce_range=config.reduce_range,
                activation_type=_qtype(config.activation_type), weight_type=_qtype(config.weight_type),
                calibrate_method=_calib_method(config.calib_method), nodes_to_exclude=list(config.exclude) or None,
                op_types=list(config.op_types) if config.op_types else None, extra_options=extra)


def _check_static_shapes(model_path: Path) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    dynamic = [s.name for s in model_io.graph_inputs(model) if not s.is_static]
    if dynamic:
        raise EdgequantError(f"{model_path}: target qnn needs static input shapes; dynamic inputs: {', '.join(dynamic)}")


def quantize_model(
    model_path: str | Path,
    out_path: str | Path,
    config: QuantizeConfig,
    calibration=None,
    *,
    on_calib_sample: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model_path`` to ``out_path`` with ``config``.

    ``calibration`` is a :class:`edgequant.data.DataSource` (required for static mode). The
    output is written atomically; the input is never touched.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    refuse_overwrite(out_path, model_path)
    if config.mode == "static" and calibration is None:
        raise EdgequantError(f"{model_path}: static quantization needs calibration data (--calib SRC)")
    if config.target == "qnn":
        _check_static_shapes(model_path)
    warnings, notes = config_warnings(config), []
    if calibration is not None and getattr(calibration, "synthetic", False) and config.mode == "static":
        warnings.append("calibrating on synthetic random data: activation ranges will not match real inputs")
    with tempfile.TemporaryDirectory(prefix="edgequant-") as tmp:
        work = Path(tmp)
        prepared = prepare_model(model_path, work, config, notes)
        raw_out = work / "quantized.onnx"
        try:
            if config.mode == "dynamic":
                _run_dynamic(prepared, raw_out, config, notes)
            else:
                from .data import calibration_reader

                reader = calibration_reader(calibration, on_sample=on_calib_sample)
                _run_static(prepared, raw_out, config, reader, notes)
        except EdgequantError:
            raise
        except Exception as exc:  # noqa: BLE001 - surface ORT's reason in one line
            msg = " ".join(str(exc).split())[:300]
            raise EdgequantError(f"{model_path}: {config.mode} quantization failed: {type(exc).__name__}: {msg}") from exc
        quantized = model_io.load_model(raw_out)
        model_io.save_model(quantized, out_path, inputs=(model_path,))
    return QuantizeResult(path=out_path, config=config,
                          input_size_bytes=model_io.model_size_bytes(model_path),
                          output_size_bytes=model_io.model_size_bytes(out_path),
                          warnings=warnings, notes=notes)
