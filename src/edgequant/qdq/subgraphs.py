"""Graph surgery for the compute inside If/Loop/Scan bodies.

onnxruntime's quantizers look at the top-level graph: ``quantize_dynamic`` enters bodies only with
``EnableSubgraph`` and then only quantizes weights that are initializers *of the body*, and the QDQ
quantizer (``quantize_static``) never enters them. Exporters write body weights as ``Constant``
nodes and, for LSTMs, as Slice/Concat chains over constants (silero_vad: every Conv and LSTM sits
in an If on the sample rate). This module folds those weights into body initializers (exact), and
cuts an If branch out as a standalone model and grafts its quantized version back
(:mod:`edgequant.qdq.subgraph_static` calibrates and quantizes it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Ops whose weights a quantizer needs as initializers, and the input slots that hold them.
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "MatMul": (1,), "Gemm": (1, 2),
    "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3),
}
#: Never folded: their value is not a function of their inputs.
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
_FOLD_LIMIT_BYTES = 256 << 20   # a folded weight larger than this stays a computed tensor


def node_bodies(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """``(attribute name, graph)`` of every body a node holds (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", g


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the bodies nested in it."""
    for node in graph.node:
        yield node
        for _, body in node_bodies(node):
            yield from all_nodes(body)


def has_compute(graph: onnx.GraphProto) -> bool:
    """Whether ``graph`` (nested bodies included) holds a Conv/MatMul/Gemm/recurrent op."""
    return any(n.op_type in WEIGHT_SLOTS for n in all_nodes(graph))


def bodies_with_compute(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """``(control-flow node, attribute)`` for every top-level body that holds compute."""
    return [(n, name) for n in model.graph.node for name, body in node_bodies(n) if has_compute(body)]


def outer_reads(graph: onnx.GraphProto) -> list[str]:
    """Names ``graph`` (nested bodies included) reads from enclosing scopes, in first-use order."""
    own = {t.name for t in graph.initializer} | {i.name for i in graph.input} \
        | {o for n in graph.node for o in n.output}
    seen: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in own:
                seen.setdefault(name)
        for _, body in node_bodies(node):
            for name in outer_reads(body):
                if name not in own:
                    seen.setdefault(name)
    for out in graph.output:
        if out.name not in own:
            seen.setdefault(out.name)
    return list(seen)


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its nested bodies define."""
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names.update(o for o in node.output if o)
        for _, body in node_bodies(node):
            names |= defined_names(body)
    return names


def add_missing_domains(model: onnx.ModelProto) -> list[str]:
    """Declare every operator domain a body uses (ORT's subgraph quantization writes
    com.microsoft nodes into bodies but declares the domain only for top-level ones)."""
    declared = {o.domain for o in model.opset_import}
    missing = sorted({n.domain for n in all_nodes(model.graph)} - declared - {"", "ai.onnx"})
    for domain in missing:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return missing


# ---- folding body weights ----------------------------------------------------------------------

def fold_body_weights(model: onnx.ModelProto) -> int:
    """In every If/Loop/Scan body, turn each weight of a Conv/MatMul/Gemm/LSTM/GRU/RNN that is
    computed from constants only (``Constant`` nodes, Slice/Concat/Unsqueeze chains over them,
    initializers of enclosing scopes) into an initializer of that body; returns how many. Exact:
    the value is what onnxruntime computes at run time. The top-level graph is left to ORT's own
    constant folding (static) or left alone (dynamic, as before)."""
    folded = 0
    scope = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for _, body in node_bodies(node):
            folded += _fold_graph(body, scope, model.opset_import)
    return folded


def _fold_graph(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], opsets) -> int:
    own = {t.name for t in graph.initializer}
    constant_nodes = _constant_nodes(graph)
    consts = {**outer, **{t.name: t for t in graph.initializer}, **constant_nodes}
    producer = {o: n for n in graph.node for o in n.output if o}
    targets = [node.input[i] for node in graph.node for i in WEIGHT_SLOTS.get(node.op_type, ())
               if i < len(node.input) and node.input[i] and node.input[i] not in own]
    # replaced: names an initializer now defines, whose producer goes; dead: removed once unread
    folded, dead, replaced = 0, {(name,) for name in constant_nodes}, set()
    for name in dict.fromkeys(targets):
        if name in constant_nodes:      # the initializer replaces the Constant node
            tensor, cone = constant_nodes[name], []
            replaced.add(name)
        elif name in consts:            # an enclosing scope's constant: one name, one definition
            continue
        else:
            cone = _constant_cone(name, producer, consts)
            if cone is None or len(producer[name].output) != 1:  # a Split's other outputs may be live
                continue
            value = _evaluate(cone, name, consts, opsets)
            if value is None:
                continue
            tensor = numpy_helper.from_array(value, name)
            replaced.add(name)
        graph.initializer.append(tensor)
        own.add(name)
        consts[name] = tensor
        dead |= {tuple(n.output) for n in cone}
        folded += 1
    for node in graph.node:        # nested bodies first: they may stop reading this graph's constants
        for _, body in node_bodies(node):
            folded += _fold_graph(body, consts, opsets)
    if replaced:
        keep = [n for n in graph.node if not (len(n.output) == 1 and n.output[0] in replaced)]
        del graph.node[:]
        graph.node.extend(keep)
    if folded:
        _drop_dead(graph, dead)
    return folded


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The tensors of ``Constant`` nodes with a ``value`` attribute, named after their output."""
    out = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value" and node.output and node.output[0]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            out[node.output[0]] = tensor
    return out


def _constant_cone(name: str, producer: dict, consts: dict) -> list[onnx.NodeProto] | None:
    """The nodes that compute ``name`` from constants only (in graph order), or None."""
    cone: dict[int, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        tensor = stack.pop()
        if tensor in consts or not tensor:
            continue
        node = producer.get(tensor)
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC \
                or any(True for _ in node_bodies(node)):
            return None
        if id(node) not in cone:
            cone[id(node)] = node
            stack.extend(node.input)
    order = {id(n): k for k, n in enumerate(producer.values())}
    return sorted(cone.values(), key=lambda n: order[id(n)])


def _evaluate(cone: list[onnx.NodeProto], name: str, consts: dict, opsets) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    produced = {o for n in cone for o in n.output}
    needed = sorted({i for n in cone for i in n.input if i and i not in produced})
    graph = helper.make_graph(list(cone), "fold", [], [helper.make_empty_tensor_value_info(name)],
                              initializer=[consts[i] for i in needed])
    try:
        value = ReferenceEvaluator(helper.make_model(graph, opset_imports=list(opsets))).run(None, {})[0]
    except Exception:  # noqa: BLE001 - an op the reference cannot run: the weight stays computed
        return None
    value = np.asarray(value)
    return value if value.nbytes <= _FOLD_LIMIT_BYTES else None


def _drop_dead(graph: onnx.GraphProto, candidates: set[tuple[str, ...]]) -> None:
    """Remove the candidate nodes (keyed by their outputs) nothing reads any more; bodies' outer
    reads count as reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        for node in graph.node:
            for _, body in node_bodies(node):
                used.update(outer_reads(body))
        dead = {tuple(n.output) for n in graph.node
                if tuple(n.output) in candidates and not any(o in used for o in n.output)}
        if not dead:
            return
        keep = [n for n in graph.node if tuple(n.output) not in dead]
        candidates -= dead
        del graph.node[:]
        graph.node.extend(keep)


# ---- cutting a body out and grafting it back ---------------------------------------------------

def standalone_body(model: onnx.ModelProto, body: onnx.GraphProto, inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """``body`` as a model of its own: the outer names it reads become graph inputs (``inputs``,
    typed from captured values), except enclosing-scope initializers, which are copied in."""
    g = onnx.GraphProto()
    g.CopyFrom(body)
    g.name = body.name or "body"
    have = {t.name for t in g.initializer}
    outer_inits = {t.name: t for t in model.graph.initializer}
    for name in outer_reads(body):
        if name in outer_inits and name not in have:
            g.initializer.append(outer_inits[name])
    del g.input[:]
    g.input.extend(inputs)
    out = helper.make_model(g, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    from .prepare import _subgraph_local_initializers

    _subgraph_local_initializers(out)   # or the quantizer deletes what only nested bodies read
    return out


def graft_body(model: onnx.ModelProto, node: onnx.NodeProto, attr_name: str, fp32_body: onnx.GraphProto,
               quantized: onnx.ModelProto, tag: str) -> None:
    """Replace ``node``'s body ``attr_name`` (in ``model``) by the quantized standalone model's graph.

    Names the quantizer created (scales, zero points, Q/DQ outputs) get a ``__<tag>`` suffix so
    that they cannot clash with the enclosing scopes or the sibling branch (ONNX forbids shadowing).
    """
    q = quantized.graph
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    needs = next((o.version for o in quantized.opset_import if (o.domain or "ai.onnx") == "ai.onnx"), 0)
    if needs > opsets.get("ai.onnx", needs):   # onnxruntime moved the branch to opset 21 for 16-bit Q/DQ
        raise ValueError(f"the quantized branch needs opset {needs} (16-bit Q/DQ) but the model around it is "
                         f"opset {opsets['ai.onnx']}")
    body_outputs = [o.name for o in fp32_body.output]
    if [o.name for o in q.output] != body_outputs:
        raise ValueError(f"the quantizer renamed the body's outputs ({body_outputs} -> {[o.name for o in q.output]})")
    old = defined_names(fp32_body) | set(outer_reads(fp32_body))
    rename = {n: f"{n}__{tag}" for n in defined_names(q) - old - {i.name for i in q.input}}
    g = onnx.GraphProto()
    g.CopyFrom(q)
    _rename(g, rename)
    toposort(g)
    del g.input[:]
    g.name = fp32_body.name
    attr = next(a for a in node.attribute if a.name == attr_name)
    attr.g.CopyFrom(g)
    known = {(o.domain, o.version) for o in model.opset_import}
    domains = {o.domain for o in model.opset_import}
    for imp in quantized.opset_import:
        if imp.domain not in domains and (imp.domain, imp.version) not in known:
            model.opset_import.append(imp)


def ungrafted(graph: onnx.GraphProto, tag: str) -> onnx.GraphProto:
    """A copy of a body :func:`graft_body` wrote with ``tag``, its names as the quantizer wrote
    them (``x_DequantizeLinear_Output``: what the per-node sensitivity pairs FP32 tensors by)."""
    suffix = f"__{tag}"
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    _rename(g, {n: n[: -len(suffix)] for n in defined_names(graph) if n.endswith(suffix)})
    return g


def _rename(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    if not rename:
        return
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for vi in (*graph.value_info, *graph.output, *graph.input):
        vi.name = rename.get(vi.name, vi.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
        for _, body in node_bodies(node):
            _rename(body, rename)


def toposort(graph: onnx.GraphProto) -> None:
    """Order the nodes of ``graph`` and of its bodies so each follows the producers of what it
    reads, counting what its bodies read from it (ORT's quantizer sorts on explicit inputs only;
    onnx's checker refuses that)."""
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    deps = []
    for node in graph.node:
        reads = [i for i in node.input if i]
        for _, body in node_bodies(node):
            reads.extend(outer_reads(body))
        deps.append({producer[r] for r in reads if r in producer})
    for node in graph.node:
        for _, body in node_bodies(node):
            toposort(body)
    # Kahn's algorithm, always taking the earliest ready node: an already sorted graph is unchanged
    readers: list[list[int]] = [[] for _ in graph.node]
    waiting = [len(d - {k}) for k, d in enumerate(deps)]
    for k, d in enumerate(deps):
        for p in d - {k}:
            readers[p].append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) < len(graph.node):   # a cycle: leave the graph as it was found
        return
    if order != list(range(len(graph.node))):
        nodes = [graph.node[k] for k in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for c, n in zip(copies, nodes):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
