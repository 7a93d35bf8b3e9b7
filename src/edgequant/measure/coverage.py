"""INT8 coverage: which compute ops a model really runs as integer kernels in onnxruntime.

Counting Q/DQ nodes in the saved file says little: QDQ models are executed by fusing
``DQ -> op -> Q`` groups into integer kernels during ORT's graph optimization, and groups
that don't match a selector stay in float with the DQ nodes left behind. So the device lets
its runtime optimize the model (``Device.coverage``) and this module counts the node types of
the graph it would actually run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx

#: Float compute ops (matrix/conv work) that ORT can run as an integer kernel.
FLOAT_COMPUTE_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
    "NchwcConv", "Attention", "MultiHeadAttention", "LSTM",
})

#: Integer kernels those float ops become after quantization and ORT's QDQ fusions.
INT8_COMPUTE_OPS: frozenset[str] = frozenset({
    "QLinearConv", "QLinearConvTranspose", "QLinearMatMul", "QGemm", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "QAttention",
    "DynamicQuantizeLSTM", "MatMulNBits",
})


#: Quantizer notes naming a control-flow body whose compute stays float start with this (the
#: verdict quotes the first one when nothing else was quantized).
BODY_FLOAT_NOTE = "If/Loop/Scan body "


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

    def to_dict(self) -> dict[str, Any]:
        """report.json's ``int8_coverage`` object."""
        return {"quantized_compute_ops": self.quantized_compute_ops, "compute_ops": self.compute_ops,
                "float_compute_nodes": list(self.float_compute_nodes)}


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


@dataclass(frozen=True)
class Placement:
    """Where an accelerator device put a model's nodes (report.json's per-variant ``placement``).

    Quantize/dequantize nodes on the graph's own inputs and outputs run on the CPU by design
    (``io_on_cpu``); every other node on the CPU is a fallback. ``compute_on_cpu`` counts the
    operators among them (anything but Q/DQ: a LayerNormalization or Erf the accelerator rejects
    costs a round trip to the CPU as surely as a Conv does): the accelerator cannot run the model
    as built. ``operators_on_cpu`` names them (node names, without the op type).
    """

    accelerator: int
    cpu_fallback: int
    cpu_fallback_nodes: list[str]
    io_on_cpu: int = 0
    compute_on_cpu: int = 0
    operators_on_cpu: tuple[tuple[str, str], ...] = ()    # (node name, op type)

    def to_dict(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "cpu_fallback": self.cpu_fallback,
                "cpu_fallback_nodes": list(self.cpu_fallback_nodes), "io_on_cpu": self.io_on_cpu,
                "compute_on_cpu": self.compute_on_cpu,
                "operators_on_cpu": [f"{name} ({op})" for name, op in self.operators_on_cpu]}
