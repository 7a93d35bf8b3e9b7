"""Small read helpers over an ONNX graph: producers, consumers, initializers, node counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


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

    def single_reader(self, tensor: str) -> bool:
        """``tensor`` is read by exactly one node and is not a graph output: rewriting it in place
        (or what produces it) changes nothing else."""
        return len(self.consumers.get(tensor, [])) == 1 and tensor not in self.graph_outputs

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


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (strings as bytes), else ``default``."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op-type histogram of the main graph."""
    return dict(Counter(n.op_type for n in model.graph.node))


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version (ai.onnx)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs read each tensor (a node reading it twice counts twice)."""
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 activations (not initializers) known from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - contrib ops etc.: fall back to what the file declares
        inferred = model
    g = inferred.graph
    inits = {t.name for t in g.initializer}
    infos = [*g.value_info, *g.output, *g.input]
    names = {vi.name for vi in infos if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    typed = {vi.name for vi in infos if vi.type.tensor_type.elem_type}
    if any(o and o not in typed for n in g.node if n.domain not in ("", "ai.onnx") for o in n.output):
        names |= _contrib_float_outputs(model)
    return names - inits


def quantizer_unseen(model: onnx.ModelProto) -> set[str]:
    """Node outputs onnxruntime's quantizer cannot see: it knows only initializers and what ONNX's own
    shape inference types, so such an activation is never quantized and an override for it is refused
    ("not present in the model"). Only a graph with ops outside the default domain (onnxruntime's
    contrib ops) can hold one."""
    if all(n.domain in ("", "ai.onnx") for n in model.graph.node):
        return set()
    outputs = {o for n in model.graph.node for o in n.output if o}
    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - the quantizer's own inference fails the same way: it reports that
        g = model.graph
    return outputs - {t.name for t in g.initializer} - {vi.name for vi in (*g.value_info, *g.output, *g.input)}


def static_dims(model: onnx.ModelProto, axis: int) -> dict[str, int]:
    """Tensor name -> its size along ``axis`` where ONNX's shape inference knows it ({} when it fails)."""
    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - unknown ops: no static sizes
        return {}
    out = {}
    for vi in (*g.value_info, *g.input, *g.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > (axis if axis >= 0 else -axis - 1) and dims[axis].HasField("dim_value"):
            out[vi.name] = dims[axis].dim_value
    return out


def symbolic_value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The value_info onnxruntime's symbolic shape inference writes: unlike ONNX's own, it knows the
    contrib ops (Attention, SkipLayerNormalization, Inverse); [] where it fails too."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # noqa: BLE001 - an op it does not know either: keep what ONNX inferred
        return []
    return [] if inferred is None else list(inferred.graph.value_info)


def _contrib_float_outputs(model: onnx.ModelProto) -> set[str]:
    """Float tensors downstream of onnxruntime's contrib ops (Attention, SkipLayerNormalization,
    BiasGelu: a fused transformer), which ONNX's shape inference leaves untyped: onnxruntime's
    symbolic inference knows them. Without it a fused graph's activations look like none, and
    calibration or weight rounding silently sees nothing."""
    return {vi.name for vi in symbolic_value_infos(model) if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _exposable(model: onnx.ModelProto, wanted: Iterable[str] | None) -> list[str]:
    """The float activations of ``model`` (those in ``wanted``) that a node or the graph input produces."""
    available = float_tensors(model)
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    names = sorted((available & set(wanted)) if wanted is not None else available)
    return [n for n in names if n in produced]


def save_beside(model: onnx.ModelProto, out_path: Path, model_path: Path) -> None:
    """External-data weights are never loaded: they are referenced from the copy (models over 2 GiB
    cannot be serialized as one protobuf)."""
    from edgequant import model as model_io

    if model_io.external_locations(model):
        model_io.save_referencing(model, out_path, model_path)
    else:
        onnx.save(model, str(out_path))


def expose_tensors(model_path: Path, out_path: Path, wanted: Iterable[str] | None = None) -> list[str]:
    """Write a copy of the model whose graph outputs include every float activation; returns them."""
    model = onnx.load(str(model_path), load_external_data=False)
    names = _exposable(model, wanted)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    save_beside(model, out_path, model_path)
    return names


_REDUCTIONS = {"ReduceMin": (onnx.TensorProto.FLOAT, {"keepdims": 0}),
               "ReduceMax": (onnx.TensorProto.FLOAT, {"keepdims": 0}),
               "ReduceL1": (onnx.TensorProto.FLOAT, {"keepdims": 0}),
               "Size": (onnx.TensorProto.INT64, {})}


def expose_reduced(model_path: Path, out_path: Path, wanted: Iterable[str] | None = None,
                   ops: tuple[str, ...] = ("ReduceMin", "ReduceMax")) -> dict[str, tuple[str, ...]]:
    """Write a copy of the model that outputs, per float activation, each of ``ops`` (ReduceMin,
    ReduceMax, ReduceL1, Size) applied to it inside the graph; returns tensor -> one output name per op.

    Scalars are all that range estimation (per-sample extrema) or sizing needs: exposing the tensors
    themselves makes onnxruntime keep every activation of a sample alive at once (hundreds of MB on a
    text recognizer), where in-graph reductions leave the buffers to be reused as in inference."""
    model = onnx.load(str(model_path), load_external_data=False)
    out: dict[str, tuple[str, ...]] = {}
    reductions: dict[str, list[onnx.NodeProto]] = {}
    for i, name in enumerate(_exposable(model, wanted)):
        names = tuple(f"edgequant_{op.lower()}_{i}" for op in ops)
        reductions[name] = [onnx.helper.make_node(op, [name], [o], name=o, **_REDUCTIONS[op][1])
                            for op, o in zip(ops, names)]
        model.graph.output.extend(onnx.helper.make_tensor_value_info(o, _REDUCTIONS[op][0], None)
                                  for op, o in zip(ops, names))
        out[name] = names
    insert_after_producers(model, reductions)
    save_beside(model, out_path, model_path)
    return out


def drop_nodes(graph: onnx.GraphProto, ids: set[int]) -> None:
    """Remove the nodes whose ``id()`` is in ``ids``, keeping the others in order."""
    if ids:
        keep = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(keep)


def insert_after_producers(model: onnx.ModelProto, readers: dict[str, list[onnx.NodeProto]]) -> None:
    """Put ``readers[t]`` right after the node producing ``t`` (graph inputs: first). onnxruntime runs
    nodes in this order: statistics nodes left at the end would keep every activation alive until then."""
    nodes = [r for i in model.graph.input for r in readers.get(i.name, [])]
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(r for o in n.output for r in readers.get(o, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


#: onnxruntime's quantizer names the codes of FP32 tensor T "T_QuantizeLinear_Output".
Q_OUTPUT_SUFFIX = "_QuantizeLinear_Output"


def float_source(idx: GraphIndex, tensor: str) -> str:
    """The FP32 graph's name of what a QDQ graph's node reads as ``tensor``: through
    DequantizeLinear <- QuantizeLinear back to the quantized activation."""
    src = tensor
    dq = idx.producer.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = idx.producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            src = q.input[0]
        elif dq.input[0].endswith(Q_OUTPUT_SUFFIX):   # a Pad that runs on the codes (qdq.quantized_pad)
            src = dq.input[0].removesuffix(Q_OUTPUT_SUFFIX)
    return src.removesuffix("_QuantizeLinear_Input")


def dequantize_constant(dq: onnx.NodeProto, idx: GraphIndex) -> np.ndarray | None:
    """The float64 value of a DequantizeLinear whose input, scale and zero point are constants
    (per-tensor or per-channel along its ``axis``); None when any of them is not a constant."""
    x, scale = idx.const(dq.input[0]), idx.const(dq.input[1])
    if x is None or scale is None:
        return None
    zp = idx.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    scale = scale.astype(np.float64)
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (x.astype(np.float64) - zp) * scale
