"""The selective rewrite: a post-pass on the full INT8 model that removes Q/DQ around float nodes.

Why a post-pass and not ``nodes_to_exclude``: ORT 1.32's ``WeightBiasQuantization`` re-quantizes
a float-weight Conv/Gemm sitting between a DequantizeLinear and a QuantizeLinear at load time,
so an excluded node whose neighbours are quantized runs INT8 anyway (benchmarks/FINDINGS.md).
Here a float node reads its input *before* the Q when the producer is float too, and gets its
original FP32 weights back, so a float region is exact FP32.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.qdq.graph import GraphIndex, dequantize_constant
from edgequant.qdq.selective.plan import QDQ_OPS, dq_activation_source


def apply_float_nodes(qmodel: onnx.ModelProto, float_nodes: Iterable[str],
                      fp32_model: onnx.ModelProto | None = None, *,
                      units: Iterable[str] | None = None) -> onnx.ModelProto:
    """A copy of ``qmodel`` in which ``float_nodes`` run in FP32.

    ``units`` are the nodes ORT runs as integer kernels in ``qmodel`` (:func:`analyse`; default:
    every non-Q/DQ node reading a DequantizeLinear). Every node that is not INT8 afterwards
    gets float weights/biases (the FP32 original when ``fp32_model`` has one of that name and
    shape, else the dequantized value) and reads an activation *before* its Q/DQ pair when the
    producer is not INT8 either (or is a graph input); from an INT8 producer it reads the DQ.
    Q and DQ nodes left without consumers are removed.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    idx = GraphIndex.build(g)
    floats = set(float_nodes)
    if units is None:
        units = [n.name for n in g.node if n.op_type not in QDQ_OPS
                 and any((p := idx.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)]
    int8 = set(units) - floats
    originals = {t.name: t for t in fp32_model.graph.initializer} if fp32_model is not None else {}

    new_inits: list[onnx.TensorProto] = []
    existing = {t.name for t in g.initializer}
    for n in g.node:
        if n.op_type in QDQ_OPS or n.name in int8:
            continue
        for k, i in enumerate(n.input):
            dq = idx.producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            const = idx.const(dq.input[0])
            if const is not None:
                orig_name = i.removesuffix("_DequantizeLinear_Output")
                value = dequantize_constant(dq, idx).astype(np.float32)
                orig = originals.get(orig_name)
                if orig is not None:
                    ov = numpy_helper.to_array(orig)
                    if ov.shape == value.shape and ov.dtype == np.float32:
                        value = ov
                name = f"{orig_name}__float"
                if name not in existing:
                    new_inits.append(numpy_helper.from_array(value.astype(np.float32), name))
                    existing.add(name)
                n.input[k] = name
                continue
            src = dq_activation_source(dq, idx)
            if src is None:
                continue
            prod = idx.producer.get(src)
            if prod is None or prod.name not in int8:
                n.input[k] = src  # producer float (or graph input): skip the Q/DQ round trip
    g.initializer.extend(new_inits)
    _remove_dead_qdq(m)
    return m


def _remove_dead_qdq(m: onnx.ModelProto) -> None:
    g = m.graph
    outputs = {o.name for o in g.output}
    while True:
        used = Counter(i for n in g.node for i in n.input if i)
        dead = [n for n in g.node if n.op_type in QDQ_OPS and not any(used[o] or o in outputs for o in n.output)]
        if not dead:
            break
        drop = {id(n) for n in dead}
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    keep_init = [t for t in g.initializer if t.name in used or t.name in outputs]
    del g.initializer[:]
    g.initializer.extend(keep_init)
    names = {o for n in g.node for o in n.output}
    keep_vi = [v for v in g.value_info if v.name in names]
    del g.value_info[:]
    g.value_info.extend(keep_vi)

