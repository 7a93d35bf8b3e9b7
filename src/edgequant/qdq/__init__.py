"""QDQ static quantization whose Q/DQ placement lets onnxruntime's CPU fusions fire.

Public, stable API::

    from edgequant.qdq import quantize_static_optimized, int8_coverage, QuantizationSummary

    summary = quantize_static_optimized(
        model_in, model_out, calibration_reader,        # an onnxruntime CalibrationDataReader
        per_channel=True, reduce_range=False,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=None, op_types=None, extra_options=None)
    summary.quantized_compute_ops, summary.compute_ops, summary.float_compute_nodes

    quantized, total, float_names = int8_coverage("model.int8.onnx")

Why it exists: ORT's documented flow (``quant_pre_process`` + ``quantize_static`` defaults)
writes int8 activations; on x86 ORT only fuses ``DQ -> op -> Q`` groups with uint8
activations and its S8->U8 rewrite skips tensors with fan-out, so residual blocks stay float
(resnet18: 9 of 20 Conv fused). This recipe uses uint8 activations (or rewrites int8 ones
exactly), then *verifies* on ORT's optimized graph that every Conv/Gemm/MatMul became an
integer kernel and names the reason for any that didn't. Findings: ``benchmarks/FINDINGS.md``.

On x86 without VNNI pass ``reduce_range=True`` (7-bit weights) or ``weight_type=QUInt8`` to
avoid VPMADDUBSW saturation (``edgequant.quantize`` warns from the target rule). ``extra_options``
go to ORT and only there (after our defaults: ``DefaultTensorType=FLOAT``, per-channel MatMul on
axis 1); ``activations_to_uint8`` (default: on for int8 activations on x86 targets) and
``target`` are edgequant's own.
Transformer encoders: see :mod:`edgequant.qdq.transformers` (fuse first, then dynamic).
"""

from edgequant.measure.coverage import Coverage
from edgequant.qdq.recipe import quantize_static_optimized
from edgequant.qdq.summary import QuantizationSummary

__all__ = ["Coverage", "QuantizationSummary", "coverage", "int8_coverage", "quantize_static_optimized"]


def coverage(model_path) -> Coverage:
    """INT8 coverage of ``model_path`` on this machine's CPU device (ORT's optimized graph)."""
    from edgequant.devices import local_cpu

    return local_cpu().coverage(model_path)


def int8_coverage(model_path) -> tuple[int, int, list[str]]:
    """``(quantized_compute_ops, compute_ops, float compute node names)`` after ORT optimization."""
    c = coverage(model_path)
    return c.quantized_compute_ops, c.compute_ops, c.float_compute_nodes
