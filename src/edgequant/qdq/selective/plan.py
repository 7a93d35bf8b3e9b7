"""Graph analysis for selective INT8: which nodes ORT runs as integer kernels, and where a mix of
INT8 and float nodes needs a standalone Q or DQ.

A fully quantized QDQ model is read together with ORT's EXTENDED-level optimized graph (the level
that runs the QDQ fusions but keeps the original node names): a node that no longer reads a
DequantizeLinear there became an integer kernel (a *unit*). A float node that would sit between
a DQ from an INT8 producer and a Q to an INT8 consumer is *sandwiched*: ORT's
``WeightBiasQuantization`` would re-quantize it at load time, so no search may propose it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgequant.qdq.graph import GraphIndex

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass
class QdqPlan:
    """Facts about a fully quantized QDQ model that the search needs.

    ``units``: nodes ORT runs as integer kernels (their names); ``float_ops``: non-Q/DQ nodes
    ORT keeps float even in the full INT8 model (e.g. PRelu); ``pairs``: activation tensor ->
    (producer node name or None for a graph input, consumer node names through its DQs).
    """

    units: list[str]
    op_type: dict[str, str]
    float_ops: set[str]
    pairs: dict[str, tuple[str | None, list[str]]]
    inputs_of: dict[str, list[str]]            # unit -> activation tensors it reads via a DQ
    outputs_of: dict[str, list[str]]           # node -> pair tensors it produces
    graph_output_tensors: set[str] = field(default_factory=set)   # pair tensors whose DQ is a graph output
    feeds_float_consumer: dict[str, bool] = field(default_factory=dict)  # pair tensor read raw by a float op

    def islands(self) -> list[list[str]]:
        """Connected groups of units joined by a pair tensor that an INT8 unit both writes and reads."""
        parent = {u: u for u in self.units}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        units = set(self.units)
        for prod, cons in self.pairs.values():
            if prod in units:
                for c in cons:
                    if c in units:
                        parent[find(c)] = find(prod)
        groups: dict[str, list[str]] = defaultdict(list)
        for u in self.units:
            groups[find(u)].append(u)
        return list(groups.values())


def dq_activation_source(dq: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """The float tensor a DQ re-creates: the input of its Q (None for constant weights/biases)."""
    q = idx.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or idx.const(q.input[0]) is not None:
        return None
    return q.input[0]


def analyse(qmodel: onnx.ModelProto, optimized_extended: onnx.ModelProto) -> QdqPlan:
    """Units, float-only ops and activation Q/DQ pairs of a QDQ model.

    A non-Q/DQ node is a *unit* when ORT fuses it into an integer kernel: in the EXTENDED-level
    optimized graph (which keeps original node names) it no longer reads a DequantizeLinear
    output. A node that still does is float even in the full INT8 model.
    """
    g = qmodel.graph
    idx = GraphIndex.build(g)
    opt = optimized_extended.graph
    opt_idx = GraphIndex.build(opt)
    opt_by_name = {n.name: n for n in opt.node}

    def still_float(name: str, op_type: str) -> bool:
        n = opt_by_name.get(name)
        if n is None or n.op_type != op_type:
            return False
        return any((p := opt_idx.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)

    units: list[str] = []
    float_ops: set[str] = set()
    op_type: dict[str, str] = {}
    inputs_of: dict[str, list[str]] = {}
    outputs_of: dict[str, list[str]] = defaultdict(list)
    pairs: dict[str, tuple[str | None, list[str]]] = {}
    raw_float_read: dict[str, bool] = defaultdict(bool)
    to_output: set[str] = set()
    for n in g.node:
        if n.op_type in QDQ_OPS:
            continue
        op_type[n.name] = n.op_type
        acts = []
        touches_qdq = False
        for i in n.input:
            p = idx.producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear":
                touches_qdq = True
                src = dq_activation_source(p, idx)
                if src is not None:
                    acts.append(src)
        outs_to_q = any(c.op_type == "QuantizeLinear" for o in n.output for c in idx.consumers.get(o, []))
        if not (touches_qdq or outs_to_q):
            float_ops.add(n.name)  # never quantized
            continue
        if not touches_qdq or still_float(n.name, n.op_type):
            float_ops.add(n.name)
        else:
            units.append(n.name)
            inputs_of[n.name] = acts
    for q in g.node:
        if q.op_type != "QuantizeLinear" or idx.const(q.input[0]) is not None:
            continue
        t = q.input[0]
        prod = idx.producer.get(t)
        cons = pairs.get(t, (None, []))[1]
        for dq in idx.consumers.get(q.output[0], []):
            if dq.op_type == "DequantizeLinear":
                cons = cons + [c.name for c in idx.consumers.get(dq.output[0], [])]
        pname = prod.name if prod is not None else None
        pairs[t] = (pname, cons)
        if any(dq.op_type == "DequantizeLinear" and dq.output[0] in {o.name for o in g.output}
               for dq in idx.consumers.get(q.output[0], [])):
            to_output.add(t)
        if pname is not None and t not in outputs_of[pname]:
            outputs_of[pname].append(t)
        raw_float_read[t] = any(c.op_type != "QuantizeLinear" for c in idx.consumers.get(t, []))
    return QdqPlan(units=units, op_type=op_type, float_ops=float_ops, pairs=pairs, inputs_of=inputs_of,
                   outputs_of=dict(outputs_of), graph_output_tensors=to_output,
                   feeds_float_consumer=dict(raw_float_read))


def sandwiched(plan: QdqPlan, float_nodes: set[str]) -> list[str]:
    """Float nodes ORT would re-quantize: a DQ from an INT8 producer in, a Q to an INT8 consumer out."""
    int8 = set(plan.units) - float_nodes
    bad = []
    for u in float_nodes:
        dq_in = any(plan.pairs.get(t, (None, []))[0] in int8 for t in plan.inputs_of.get(u, []))
        # a pair feeding a graph output keeps its Q (the output name is the DQ's), so it counts as INT8
        q_out = any(c in int8 for t in plan.outputs_of.get(u, []) for c in plan.pairs[t][1]) \
            or any(t in plan.graph_output_tensors for t in plan.outputs_of.get(u, []))
        if dq_in and q_out:
            bad.append(u)
    return sorted(bad)


def boundaries(plan: QdqPlan, float_nodes: set[str], numel: Mapping[str, int]) -> tuple[int, int]:
    """(count, elements) of standalone Q/DQ at float/INT8 boundaries (each with its layout Transpose)."""
    int8 = set(plan.units) - float_nodes
    count = total = 0
    default = int(np.median(list(numel.values()))) if numel else 1
    for t, (prod, cons) in plan.pairs.items():
        n = numel.get(t, default)
        prod_int8 = prod in int8
        any_int8 = any(c in int8 for c in cons)
        any_float = any(c not in int8 for c in cons) or t in plan.graph_output_tensors \
            or plan.feeds_float_consumer.get(t, False)
        k = (not prod_int8 and any_int8) + (prod_int8 and any_float)
        count += k
        total += n * k
    return count, total


def boundary_elements(plan: QdqPlan, float_nodes: set[str], numel: Mapping[str, int]) -> int:
    """Elements that cross a float/INT8 boundary (a standalone Q or DQ, plus its layout Transpose)."""
    return boundaries(plan, float_nodes, numel)[1]


def element_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of every tensor with a fully known static shape (shape inference is best effort)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = model
    out: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            out[vi.name] = int(np.prod(dims))
    return out
