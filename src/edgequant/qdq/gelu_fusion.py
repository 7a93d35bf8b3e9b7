"""The erf form of GELU, x * 0.5 * (1 + erf(x / sqrt 2)) as exporters write it (Div or Mul, Erf,
Add, two Muls), rewritten as one ``com.microsoft`` Gelu node: the same function.

Why, for Hexagon HTP: onnxruntime-qnn does not take Erf, so each GELU of a BERT runs on the CPU
with a round trip, and quantized node by node its four intermediate tensors each add 8-bit error.
One Gelu runs on HTP with one output scale (a MatMul -> GELU -> MatMul block, QDQ for qnn on the
HTP simulator: Erf form 1 node on the CPU, cosine 0.9904 vs FP32; Gelu 0 nodes, 0.99977).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from ..graph_pass import GraphPass, PassContext
from .graph import GraphIndex
from .subgraphs import add_missing_domains

_TOL = 1e-4


def _scalar(idx: GraphIndex, name: str) -> float | None:
    value = idx.const(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _other(node: onnx.NodeProto, name: str) -> str | None:
    rest = [t for t in node.input if t != name]
    return rest[0] if len(node.input) == 2 and len(rest) == 1 else None


def _only_reader(idx: GraphIndex, tensor: str, op: str) -> onnx.NodeProto | None:
    if not idx.single_reader(tensor):
        return None
    reader = idx.consumers[tensor][0]
    return reader if reader.op_type == op else None


def _match(erf: onnx.NodeProto, idx: GraphIndex) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the nodes from the scaling to the GELU output) when ``erf`` is the core of an erf GELU."""
    scale = idx.producer.get(erf.input[0])
    if scale is None or scale.op_type not in ("Div", "Mul") or len(scale.input) != 2:
        return None
    x = scale.input[0]
    c = _scalar(idx, scale.input[1])
    if c is None or abs((c if scale.op_type == "Div" else 1.0 / c) - math.sqrt(2.0)) > _TOL * 10:
        return None
    if _only_reader(idx, scale.output[0], "Erf") is None:
        return None
    add = _only_reader(idx, erf.output[0], "Add")
    if add is None or _scalar(idx, _other(add, erf.output[0]) or "") != 1.0:
        return None
    mul = _only_reader(idx, add.output[0], "Mul")
    if mul is None:
        return None
    other = _other(mul, add.output[0])
    if other == x:                                              # (x * (1 + erf)) * 0.5
        half = _only_reader(idx, mul.output[0], "Mul")
        if half is None or abs((_scalar(idx, _other(half, mul.output[0]) or "") or 0.0) - 0.5) > _TOL:
            return None
        return x, [scale, erf, add, mul, half]
    pre = idx.producer.get(other or "")                         # (x * 0.5) * (1 + erf)
    if pre is None or pre.op_type != "Mul" or x not in pre.input or \
            abs((_scalar(idx, _other(pre, x) or "") or 0.0) - 0.5) > _TOL or \
            _only_reader(idx, pre.output[0], "Mul") is None:
        return None
    return x, [scale, erf, add, pre, mul]


def fuse_erf_gelu(model: onnx.ModelProto) -> int:
    """Rewrite every erf GELU of the top-level graph as a com.microsoft Gelu; how many."""
    idx = GraphIndex.build(model.graph)
    replaced: dict[int, onnx.NodeProto] = {}     # id of the GELU's output node -> the Gelu
    dropped: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "Erf":
            continue
        found = _match(node, idx)
        if found is None or any(id(n) in dropped for n in found[1]):
            continue
        x, nodes = found
        out = nodes[-1].output[0]
        dropped.update(id(n) for n in nodes)
        replaced[id(nodes[-1])] = helper.make_node("Gelu", [x], [out], domain="com.microsoft",
                                                   name=f"{nodes[1].name or out}__gelu")
    if not replaced:
        return 0
    kept = [replaced.get(id(n), n) for n in model.graph.node if id(n) not in dropped or id(n) in replaced]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    add_missing_domains(model)
    return len(replaced)


class ErfGeluAsGelu(GraphPass):
    name = "erf_gelu_as_gelu"
    description = ("erf-form GELU (Div, Erf, Add, Mul, Mul) rewritten as one com.microsoft Gelu (the same "
                   "function; Hexagon HTP takes Gelu, not Erf)")

    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        return fuse_erf_gelu(model)
