"""What each model output is, so that it is judged by what matters for it.

A classifier is judged by arg-max agreement; an embedding by per-sample cosine and nearest-neighbour
agreement among the evaluation samples (its arg-max means nothing; a transformer's [N, T, C] token
hidden states count as one, per sample); a sequence of per-position scores by per-position agreement; anything else (regression, boxes, feature maps) by cosine and
SQNR; an anchor-based detection head (per-anchor scores beside per-anchor boxes) by whether the
same anchors fire and how far their boxes move (``measure.detection``). Roles come from the graph (the op that produces the output, its rank and width, its name) and
can be overridden per output (``--output-role NAME=ROLE``); the report states each role and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from ..errors import EdgequantError

ROLES = ("classifier", "embedding", "sequence", "detection", "dense")
#: A bare final MatMul/Gemm counts as class scores only up to this width (a 256-wide regression head
#: is not a classifier); wider classifiers are recognized by a Softmax or by their name.
MAX_BARE_CLASSES = 100
_CLASSIFIER_NAME = re.compile(r"logit|prob|score|class|pred", re.I)
_EMBEDDING_NAME = re.compile(r"embed|sentence|pooled|pooler|feature_vector", re.I)
_HIDDEN_NAME = re.compile(r"hidden_state", re.I)
#: What ends a transformer layer: its [N, T, C] output holds token vectors, not per-position scores.
_NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"}
_NORMALIZING = {"LpNormalization", "ReduceL2"}
_PASS_THROUGH = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast"}


@dataclass(frozen=True)
class OutputRole:
    name: str
    role: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "reason": self.reason}


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _producer_chain(name: str, producer: Mapping[str, onnx.NodeProto], depth: int = 4) -> list[str]:
    """Op types that produce ``name``, looking through reshapes (nearest first)."""
    ops, current = [], name
    for _ in range(depth):
        node = producer.get(current)
        if node is None:
            break
        ops.append(node.op_type)
        if node.op_type not in _PASS_THROUGH or not node.input:
            break
        current = node.input[0]
    return ops


def _l2_normalized(name: str, producer: Mapping[str, onnx.NodeProto]) -> bool:
    """x / ||x||: a Div whose divisor comes from ReduceL2 / Sqrt(ReduceSum(x^2)) / LpNormalization."""
    node = producer.get(name)
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producer.get(node.input[0])
    if node is None:
        return False
    if node.op_type == "LpNormalization":
        return True
    if node.op_type != "Div" or len(node.input) < 2:
        return False
    chain = _producer_chain(node.input[1], producer, depth=4)
    return any(op in _NORMALIZING or op == "Sqrt" for op in chain)


def _detection_heads(dims: Mapping[str, list[int | None]]) -> dict[str, OutputRole]:
    """Per-anchor scores ``[N, A]``/``[N, A, 1]`` with a sibling ``[N, A, 4+k]`` box output (A known, > 1)."""
    def anchors(d: list[int | None], last: bool) -> int | None:
        if last:   # scores: [N, A] or [N, A, 1]
            core = d[1:-1] if len(d) == 3 and d[-1] == 1 else (d[1:] if len(d) == 2 else None)
        else:      # boxes: [N, A, K], K >= 4
            core = d[1:2] if len(d) == 3 and d[-1] is not None and d[-1] >= 4 else None
        return core[0] if core and core[0] is not None and core[0] > 1 else None

    found: dict[str, OutputRole] = {}
    for s, sd in dims.items():
        a = anchors(sd, True)
        box = next((b for b, bd in dims.items() if b != s and a is not None and anchors(bd, False) == a), None)
        if box is None:
            continue
        found[s] = OutputRole(s, "detection", f"per-anchor scores {sd} beside the box output {box!r} {dims[box]}")
        found.setdefault(box, OutputRole(box, "detection", f"per-anchor boxes {dims[box]} beside the scores {s!r}"))
    return found


def detect_roles(model: onnx.ModelProto, overrides: Mapping[str, str] | None = None) -> dict[str, OutputRole]:
    """Each graph output's role, with the reason (``overrides`` win; unknown names are errors)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name: o for o in g.output}
    for name, role in (overrides or {}).items():
        if name not in outputs:
            raise EdgequantError(f"--output-role {name}={role}: the model has no output {name!r} "
                                 f"(outputs: {', '.join(outputs)})")
        if role not in ROLES:
            raise EdgequantError(f"--output-role {name}={role}: unknown role; expected one of {', '.join(ROLES)}")
    roles = {}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    heads = _detection_heads({name: _dims(vi) for name, vi in outputs.items()    # ids/lengths are no scores
                              if vi.type.tensor_type.elem_type in floats})
    for name, vi in outputs.items():
        if overrides and name in overrides:
            roles[name] = OutputRole(name, overrides[name], "set by --output-role / output_roles")
            continue
        if name in heads:
            roles[name] = heads[name]
            continue
        roles[name] = _detect(name, _dims(vi), _producer_chain(name, producer), _l2_normalized(name, producer))
    return roles


def _detect(name: str, dims: list[int | None], chain: list[str], normalized: bool) -> OutputRole:
    chain = [op for op in chain if op not in _PASS_THROUGH] or chain   # the op that made the values
    width = dims[-1] if dims else None
    rank = len(dims)
    per_position = rank == 3 and (dims[1] is None or dims[1] > 1) and (width is None or width > 1)
    if chain and chain[0] in ("Softmax", "LogSoftmax"):
        if per_position:
            return OutputRole(name, "sequence", f"{chain[0]} over the last axis of a [N, T, C] output")
        return OutputRole(name, "classifier", f"produced by {chain[0]}")
    if normalized:
        return OutputRole(name, "embedding", "L2-normalised vectors")
    if _EMBEDDING_NAME.search(name):
        return OutputRole(name, "embedding", f"named like an embedding ({name!r})")
    if per_position and ((chain and chain[0] in _NORM_OPS) or _HIDDEN_NAME.search(name)):
        why = f"produced by {chain[0]}" if chain and chain[0] in _NORM_OPS else f"named {name!r}"
        return OutputRole(name, "embedding", f"token hidden states ({why}): a per-position arg-max means nothing")
    if per_position:
        return OutputRole(name, "sequence", "[N, T, C] per-position scores")
    if _CLASSIFIER_NAME.search(name) and width and width > 1:
        return OutputRole(name, "classifier", f"named like class scores ({name!r})")
    if chain and chain[0] in ("Gemm", "MatMul") and width and 1 < width <= MAX_BARE_CLASSES and rank in (2, 3):
        return OutputRole(name, "classifier", f"a final {chain[0]} into {width} classes")
    if chain and chain[0] in ("ReduceMean", "GlobalAveragePool") and rank == 2:
        return OutputRole(name, "embedding", f"pooled vectors ({chain[0]})")
    return OutputRole(name, "dense", "no classifier, embedding, sequence or detection signature")


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``NAME=ROLE`` strings from the command line."""
    out = {}
    for item in items:
        name, sep, role = item.partition("=")
        if not sep or not name or not role:
            raise EdgequantError(f"--output-role {item!r}: expected NAME=ROLE (roles: {', '.join(ROLES)})")
        out[name] = role
    return out
