"""Facts and exact rewrites of transformer-encoder graphs, for the dynamic recipe.

* :func:`attention_shape`: num_heads and hidden_size read from the graph, for onnxruntime's
  transformer optimizer. It finds them only where the Q/K/V Reshape's target shape carries the
  head count as a constant; newer Hugging Face exports write ``view(*input_shape, -1, head_size)``
  (the head count is -1), the optimizer prints "Failed to detect num_heads and hidden_size" and
  fuses no Attention. The width of the projection feeding that Reshape (the MatMul weight's
  output features) gives the missing factor: heads = width / head_size.
* :func:`unfuse_skip_layernorm`: residual ``Add -> LayerNormalization`` becomes
  ``Sum -> LayerNormalization`` (and a ``SkipLayerNormalization`` the optimizer wrote becomes
  both). Exact; it exists because onnxruntime 1.32's CPU SkipLayerNormalization kernel, which
  its session optimizer fuses from ``Add -> LayerNormalization`` (and never from ``Sum``), ran
  5x slower than the two ops it replaces ([1, 128, 384] x 6: 1.55 ms vs 0.30 ms, 1 and 2 threads,
  AMD EPYC with AVX-512 VNNI; ``benchmarks/FINDINGS.md``). The dynamic recipe keeps it only
  where the quick timing says it is faster.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .graph import GraphIndex


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    hidden_size: int
    reshapes: int              # Q/K/V head-split Reshapes that agree on it

    def describe(self) -> str:
        return (f"num_heads={self.num_heads}, hidden_size={self.hidden_size} read from the graph "
                f"({self.reshapes} head-split Reshape(s))")


def _shape_tail(index: GraphIndex, name: str) -> tuple[int, int] | None:
    """The last two entries of a rank-4 Reshape target shape: a constant, or a Concat whose last
    two inputs are constants (its other inputs one element each, e.g. Unsqueeze(Gather(Shape)))."""
    value = index.const(name)
    if value is not None:
        value = np.asarray(value).ravel()
        return (int(value[2]), int(value[3])) if value.size == 4 else None
    node = index.producer.get(name)
    if node is None or node.op_type != "Concat":
        return None
    parts: list[list[int] | None] = []
    for inp in node.input:
        v = index.const(inp)
        if v is not None:
            parts.append([int(x) for x in np.asarray(v).ravel()])
        elif inp in index.producer and index.producer[inp].op_type == "Unsqueeze":
            parts.append(None)          # a runtime dimension (batch, sequence): one element
        else:
            return None
    if sum(1 if p is None else len(p) for p in parts) != 4:
        return None
    tail: list[int] = []
    for p in reversed(parts):
        if p is None:
            break
        tail = p + tail
    return (tail[-2], tail[-1]) if len(tail) >= 2 else None


def _projection_width(index: GraphIndex, name: str) -> int | None:
    """Output features of the ``MatMul(x, W)`` (plus an optional bias Add) producing ``name``."""
    node = index.producer.get(name)
    if node is not None and node.op_type == "Add":
        for inp in node.input:
            parent = index.producer.get(inp)
            if parent is not None and parent.op_type == "MatMul":
                node = parent
                break
    if node is None or node.op_type != "MatMul":
        return None
    weight = index.const(node.input[1])
    return int(weight.shape[-1]) if weight is not None and weight.ndim == 2 else None


def attention_shape(model: onnx.ModelProto) -> AttentionShape | None:
    """num_heads and hidden_size of the encoder's attention, from the Reshapes that split a
    projection into heads (target [.., .., heads, head_size], one of them may be -1 or 0) and the
    projection's weight width; the most common answer wins. None when no Reshape fits."""
    index = GraphIndex.build(model.graph)
    votes: Counter[tuple[int, int]] = Counter()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if not any(c.op_type == "Transpose" for c in index.consumers.get(node.output[0], [])):
            continue
        tail, width = _shape_tail(index, node.input[1]), _projection_width(index, node.input[0])
        if tail is None or width is None:
            continue
        heads, head_size = tail
        if heads <= 0 < head_size and width % head_size == 0:
            heads = width // head_size
        elif head_size <= 0 < heads and width % heads == 0:
            head_size = width // heads
        if heads > 1 and head_size > 0 and heads * head_size == width:
            votes[(heads, width)] += 1
    if not votes:
        return None
    (heads, hidden), n = votes.most_common(1)[0]
    return AttentionShape(heads, hidden, n)


def unfuse_skip_layernorm(model: onnx.ModelProto) -> int:
    """Residual ``Add -> LayerNormalization`` becomes ``Sum -> LayerNormalization``, and each
    ``SkipLayerNormalization`` whose mean/inv-std outputs nobody reads becomes ``Sum`` (input,
    skip, bias) + ``LayerNormalization``; returns how many. An Add with a constant operand is a
    bias, left alone (onnxruntime folds it into the MatMul before it). In place; exact."""
    from .graph import opset_of

    graph = model.graph
    index = GraphIndex.build(graph)
    ln_exists = opset_of(model) >= 17     # the LayerNormalization a SkipLayerNormalization becomes
    consts = set(index.initializers) | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    changed = 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            add = index.producer.get(node.input[0])
            if (add is not None and add.op_type == "Add" and add.domain in ("", "ai.onnx")
                    and not set(add.input) & consts):
                add.op_type = "Sum"
                changed += 1
        if node.op_type == "SkipLayerNormalization" and node.domain == "com.microsoft" and ln_exists \
                and not any(o and index.consumers.get(o) for o in node.output[1:3]):
            nodes.extend(_sum_and_layernorm(node))
            changed += 1
            continue
        nodes.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def _sum_and_layernorm(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    ins = list(node.input) + [""] * (5 - len(node.input))
    summed = node.output[3] if len(node.output) > 3 and node.output[3] else node.output[0] + "_edgequant_sum"
    eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-12)
    ln_inputs = [summed, ins[2]] + ([ins[3]] if ins[3] else [])
    return [helper.make_node("Sum", [i for i in (ins[0], ins[1], ins[4]) if i], [summed], name=node.name + "_Sum"),
            helper.make_node("LayerNormalization", ln_inputs, [node.output[0]], name=node.name + "_LayerNorm",
                             axis=-1, epsilon=float(eps))]
