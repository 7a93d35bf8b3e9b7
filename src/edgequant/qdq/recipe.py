"""Static INT8 recipe that makes ORT run every quantizable Conv/Gemm/MatMul as an integer kernel.

See the package docstring for the public contract and ``benchmarks/FINDINGS.md`` for why the
defaults are what they are (uint8 activations on x86, our own S8->U8 rewrite, coverage check).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
)

from edgequant import model as model_io
from edgequant.graph_pass import GraphPass, run_passes
from edgequant.measure.coverage import INT8_COMPUTE_OPS, coverage_of_graph
from edgequant.qdq.amx_weights import SteerWideConvsToAmx
from edgequant.qdq.conv_channels import CHANNEL_PAD_TARGETS, PadConvInputChannels
from edgequant.qdq.graph import GraphIndex, op_counts
from edgequant.qdq.hard_activations import HardSigmoidAsAdd
from edgequant.qdq.passes import (
    ActivationsToUint8,
    DropZeroBiasZeroPoints,
    FoldIdentityQdq,
    diagnose_float_node,
)
from edgequant.qdq.prepare import prepare
from edgequant.qdq.quantized_pad import PadOnQuantized
from edgequant.qdq.summary import QuantizationSummary

_PROTOBUF_LIMIT = 2_000_000_000


def default_extra_options(per_channel: bool) -> dict[str, Any]:
    """ORT quantizer options we set unless the caller overrides them.

    * ``DefaultTensorType``: lets the quantizer type outputs of contrib ops it can't infer.
    * ``QDQOpTypePerChannelSupportToAxis``: per-channel MatMul weights are column-wise (axis 1).
    """
    opts: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if per_channel:
        opts["QDQOpTypePerChannelSupportToAxis"] = {"MatMul": 1}
    return opts


def _check_reader(reader: Any) -> None:
    if not isinstance(reader, CalibrationDataReader) and not hasattr(reader, "get_next"):
        raise TypeError("calibration_reader must be an onnxruntime CalibrationDataReader")


def quantize_static_optimized(
    model_in: str | Path,
    model_out: str | Path,
    calibration_reader: CalibrationDataReader,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    activation_type: QuantType = QuantType.QUInt8,
    weight_type: QuantType = QuantType.QInt8,
    calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
    nodes_to_exclude: list[str] | None = None,
    op_types: list[str] | None = None,
    extra_options: dict | None = None,
    prepared: bool = False,
    activations_to_uint8: bool | None = None,
    target: str = "auto",
    device: Any = None,
) -> QuantizationSummary:
    """Quantize ``model_in`` to a QDQ model at ``model_out`` whose compute ops fuse in ORT.

    ``prepared=True``: ``model_in`` already went through :func:`edgequant.qdq.prepare.prepare`
    (as :func:`edgequant.quantize.quantize_model` does), so it is not prepared twice.
    ``activations_to_uint8``: rewrite int8 activations to uint8 (default: for x86 ``target``s,
    where ORT's QDQ fusions need uint8; ``auto`` is this machine's target). ``device`` checks the
    INT8 coverage (default: this machine's CPU device).

    Pipeline: :func:`~edgequant.qdq.prepare.prepare` -> ``quantize_static``
    (QDQ, our default extra options) -> exact graph fix-ups (identity DQ->Q removal; int8
    activations rewritten to uint8 on x86; all-zero bias zero points dropped) -> INT8 coverage of ORT's optimized graph, with
    a reason for every compute op that stays float. ``model_out`` is written atomically.
    """
    from onnxruntime.quantization import quantize_static

    _check_reader(calibration_reader)
    model_in, model_out = Path(model_in), Path(model_out)
    opts = {**default_extra_options(per_channel), **dict(extra_options or {})}
    from edgequant.targets import resolve_target

    target = resolve_target(target).name
    if activations_to_uint8 is None:
        activations_to_uint8 = target.startswith("x86") and activation_type == QuantType.QInt8
    summary = QuantizationSummary(
        model_in=str(model_in), model_out=str(model_out),
        config={"format": "QDQ", "per_channel": per_channel, "reduce_range": reduce_range,
                "activation_type": activation_type.name, "weight_type": weight_type.name,
                "calibrate_method": calibrate_method.name, "nodes_to_exclude": list(nodes_to_exclude or []),
                "op_types": list(op_types) if op_types else None,
                "extra_options": {k: (v if isinstance(v, (int, float, str, bool, list, dict)) else repr(v))
                                  for k, v in opts.items()}},
        size_in_bytes=model_in.stat().st_size,
    )
    summary.ops_before = op_counts(onnx.load(str(model_in), load_external_data=False))

    with tempfile.TemporaryDirectory(prefix="edgequant-qdq-") as tmp:
        work = Path(tmp)
        if prepared:
            src = model_in
        else:
            prep = prepare(model_in, work, mode="static", per_channel=per_channel, target=target)
            summary.passes += prep.passes
            summary.warnings += prep.warnings
            src = prep.path
        qpath = work / "quantized.onnx"
        quantize_static(
            str(src), str(qpath), calibration_reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=activation_type, weight_type=weight_type,
            nodes_to_exclude=nodes_to_exclude or [], calibrate_method=calibrate_method,
            use_external_data_format=model_io.is_large(src),
            extra_options=opts,
        )
        summary.passes.append("quantize_static(QDQ)")
        model = onnx.load(str(qpath))
        _fix_up(model, activations_to_uint8, summary, target)
        staged = work / "final.onnx"
        big = model.ByteSize() > _PROTOBUF_LIMIT
        onnx.save(model, str(staged), save_as_external_data=big,
                  location=model_out.name + ".data" if big else None)
        summary.ops_after = op_counts(model)
        del model
        model_out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = model_out.with_name(model_out.name + ".tmp")
        shutil.copyfile(staged, tmp_out)
        if big:
            shutil.copyfile(work / (model_out.name + ".data"), model_out.parent / (model_out.name + ".data"))
        os.replace(tmp_out, model_out)

    summary.size_out_bytes = model_out.stat().st_size
    if device is None:
        from edgequant.devices import local_cpu

        device = local_cpu()
    _record_coverage(model_out, summary, list(nodes_to_exclude or []), device)
    return summary


def _fix_up(model: onnx.ModelProto, activations_to_uint8: bool, summary: QuantizationSummary,
            target: str) -> None:
    """Exact post-quantization passes; each one that changed something is recorded."""
    from edgequant.targets import resolve_target

    passes: list[GraphPass] = [FoldIdentityQdq(), DropZeroBiasZeroPoints()]
    if activations_to_uint8:
        passes.append(ActivationsToUint8())
    passes.append(HardSigmoidAsAdd())   # it reads the final activation types
    if resolve_target(target).exact_rewrites:   # CPU EPs; an NPU groups DQ -> Pad -> Q itself
        passes.append(PadOnQuantized())
    if target in CHANNEL_PAD_TARGETS:   # measured there only
        passes.append(PadConvInputChannels())
    if target == "x86-amx":
        passes.append(SteerWideConvsToAmx())
    for result in run_passes(model, passes):
        if result.changed or result.name == ActivationsToUint8.name:
            summary.passes.append(result.label)


# coverage_of_graph walks If/Loop/Scan bodies too; only top-level nodes can be diagnosed.
IN_BODY = ("inside an If/Loop/Scan body: onnxruntime's static (QDQ) quantizer calibrates and "
            "quantizes the top-level graph only")


FLOAT_AFTER_OPT = "compute ops stay float after ORT optimization"


def _body_node_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= {n.name for n in body.node} | _body_node_names(body)
    return names


def _record_coverage(model_out: Path, summary: QuantizationSummary, excluded: list[str], device: Any) -> None:
    optimized = device.optimized_graph(model_out, "extended")
    cov = coverage_of_graph(optimized)
    idx = GraphIndex.build(optimized.graph)
    by_name = {n.name: n for n in optimized.graph.node}
    summary.quantized_compute_ops = cov.quantized_compute_ops
    summary.compute_ops = cov.compute_ops
    in_body = _body_node_names(optimized.graph)
    summary.float_compute_nodes = {name: (diagnose_float_node(by_name[name], idx) if name in by_name
                                          else IN_BODY if name in in_body else "unknown")
                                   for name in cov.float_compute_nodes}
    summary.optimized_ops = coverage_of_graph(device.optimized_graph(model_out, "all")).op_counts
    ignored = sorted(n.name for n in optimized.graph.node if n.name in set(excluded) and n.op_type in INT8_COMPUTE_OPS)
    if ignored:
        summary.warnings.append(
            "nodes_to_exclude not honoured by ORT for " + ", ".join(ignored) + ": its WeightBiasQuantization "
            "re-quantizes a float-weight Conv/Gemm that sits between a DequantizeLinear and a QuantizeLinear; "
            "also exclude its neighbours (or its output tensor) to keep it float")
    if not summary.fully_quantized:
        summary.warnings.append(
            f"{cov.compute_ops - cov.quantized_compute_ops} of {cov.compute_ops} {FLOAT_AFTER_OPT}; "
            "expect little or no speedup from them (see float_compute_nodes)")
