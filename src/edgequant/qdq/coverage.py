"""INT8 coverage: which compute ops a model really runs as integer kernels in onnxruntime.

Counting Q/DQ nodes in the saved file says little: QDQ models are executed by fusing
``DQ -> op -> Q`` groups into integer kernels during ORT's graph optimization, and groups
that don't match a selector stay in float with the DQ nodes left behind. So we let ORT
optimize the model and count the node types of the graph it would actually run.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

#: Float compute ops (matrix/conv work) that ORT can run as an integer kernel.
FLOAT_COMPUTE_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
    "NchwcConv", "Attention", "MultiHeadAttention",
})

#: Integer kernels those float ops become after quantization and ORT's QDQ fusions.
INT8_COMPUTE_OPS: frozenset[str] = frozenset({
    "QLinearConv", "QLinearConvTranspose", "QLinearMatMul", "QGemm", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "QAttention",
    "DynamicQuantizeLSTM", "MatMulNBits",
})


@dataclass(frozen=True)
class Coverage:
    """Counts of compute ops in the ORT-optimized graph."""

    quantized_compute_ops: int
    compute_ops: int
    float_compute_nodes: list[str]
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.quantized_compute_ops / self.compute_ops if self.compute_ops else 1.0


def optimized_graph(model_path: str | Path, level: str = "all",
                    save_to: str | Path | None = None) -> onnx.ModelProto:
    """Return the graph ORT's CPU provider would execute at the given optimization level.

    ``level`` is "basic", "extended" or "all" ("all" adds the x86 NCHWc/NHWC layout passes,
    which is what a default session runs).
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="edgequant-opt-") as tmp:
        out = Path(save_to) if save_to else Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = os.fspath(out)
        so.log_severity_level = 3
        ort.InferenceSession(os.fspath(model_path), so, providers=["CPUExecutionProvider"])
        return onnx.load(os.fspath(out), load_external_data=False)


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g)


def coverage_of_graph(model: onnx.ModelProto) -> Coverage:
    """Count integer vs float compute ops in an (already optimized) model."""
    counts: Counter[str] = Counter()
    quantized, float_nodes = 0, []
    for node in _walk(model.graph):
        counts[node.op_type] += 1
        if node.op_type in INT8_COMPUTE_OPS:
            quantized += 1
        elif node.op_type in FLOAT_COMPUTE_OPS:
            float_nodes.append(node.name or f"<{node.op_type}>")
    return Coverage(quantized, quantized + len(float_nodes), float_nodes, dict(counts))


def coverage(model_path: str | Path, level: str = "extended") -> Coverage:
    """INT8 coverage of ``model_path`` after ORT's CPU graph optimization.

    The QDQ fusions run at the EXTENDED level; ALL only adds layout passes (NCHWc/NHWC) that
    don't change which ops are integer but rename float nodes, so EXTENDED keeps the
    original node names in ``float_compute_nodes``.
    """
    return coverage_of_graph(optimized_graph(model_path, level))


def int8_coverage(model_path: str | Path) -> tuple[int, int, list[str]]:
    """``(quantized_compute_ops, compute_ops, float compute node names)`` after ORT optimization.

    Stable helper for ``edgequant inspect`` and report.json's ``int8_coverage``.
    """
    c = coverage(model_path)
    return c.quantized_compute_ops, c.compute_ops, c.float_compute_nodes
