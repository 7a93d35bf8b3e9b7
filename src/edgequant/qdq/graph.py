"""Small read helpers over an ONNX graph: producers, consumers, initializers, node counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import onnx
from onnx import numpy_helper
import numpy as np


@dataclass
class GraphIndex:
    """Who produces and who consumes each tensor of one graph (not subgraphs)."""

    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    initializers: dict[str, onnx.TensorProto]
    graph_outputs: set[str]

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        producer = {o: n for n in graph.node for o in n.output if o}
        consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                if i:
                    consumers[i].append(n)
        return cls(producer, consumers, {t.name: t for t in graph.initializer},
                   {o.name for o in graph.output})

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (or Constant node output), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op-type histogram of the main graph."""
    return dict(Counter(n.op_type for n in model.graph.node))


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version (ai.onnx)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0
