"""Write a trained :class:`QDQNet` back into its QDQ ONNX graph: the same nodes, new initializers.

* weights: the fake-quant's integers (same dtype, scale, zero point, axis);
* activation scales: the learned values (every Q/DQ naming the initializer gets it);
* biases: int32 at scale input scale * weight scale, recomputed from the learned input scale
  (the float32 product, as onnxruntime's quantizer writes it and as the torch model used it).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .interpreter import QDQNet


def _set(inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    old = inits[name]
    dtype = numpy_helper.to_array(old).dtype
    new = numpy_helper.from_array(np.asarray(value).astype(dtype).reshape(tuple(old.dims)), name)
    old.CopyFrom(new)


@torch.no_grad()
def export_qdq(net: QDQNet, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (the QDQ graph ``net`` was built from) with ``net``'s trained values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    dq_of = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    net.eval()
    for wout, key in net.weight_keys.items():
        _set(inits, dq_of[wout].input[0], net.weights[key].integers().numpy())
    for name, key in net.scale_keys.items():
        _set(inits, name, net.scales[key].scale().numpy())
    for key, (bout, in_key, wout) in net.bias_of.items():
        node = dq_of[bout]
        scale = (net.scales[in_key].scale() * net.weight_scale(wout)).numpy().astype(np.float32)
        shape = tuple(inits[node.input[1]].dims)
        scale = np.broadcast_to(scale, shape) if scale.size <= int(np.prod(shape)) else scale
        value = net.biases[key].value().numpy()
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        q = np.clip(np.round(value / scale.astype(np.float32)), lo, hi)   # float32 division, half to even
        _set(inits, node.input[1], scale)
        _set(inits, node.input[0], q.astype(np.int32))
    return out
