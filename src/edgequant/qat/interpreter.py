"""A QDQ ONNX graph as a trainable torch module with the graph's exact quantization semantics.

* DequantizeLinear of a constant integer weight -> :class:`WeightQuant` (trainable, started from
  the FP32 model's weight, fixed scale / zero point / axis / integer range);
* DequantizeLinear of an int32 bias read by Conv/Gemm -> :class:`BiasQuant` at scale
  input scale * weight scale;
* QuantizeLinear / DequantizeLinear of activations -> STE quantize / dequantize with one learnable
  :class:`ActScale` per scale initializer (tensors that share a scale in the graph keep sharing it);
* every other op -> its torch function (``ops.OPS``); an op without one is refused up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import EdgequantError
from . import fakequant as fq
from .ops import OPS

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Ops whose input 1 is a weight quantized with the target's weight range (reduce_range, symmetric).
WEIGHT_READERS = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvTranspose": 1}


@dataclass(frozen=True)
class Step:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    kind: str = "op"            # op | wq (weight DQ) | bq (bias DQ) | q | dq (activations) | skip
    key: str = ""               # module key for wq / bq / q / dq (its ActScale)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.op_type not in OPS and n.op_type not in QUANT_OPS
                   and n.op_type != "Constant"})


def fp32_name(quantized_name: str) -> str:
    """onnxruntime's quantizer names a weight W's integers ``W_quantized``."""
    return quantized_name[: -len("_quantized")] if quantized_name.endswith("_quantized") else quantized_name


class QDQNet(nn.Module):
    """``forward(*inputs) -> list of outputs`` in graph order; ``weight_range(dtype) -> (qmin, qmax)``
    is the target's range for weights of Conv/Gemm/MatMul (ORT's reduce_range / symmetric rule)."""

    def __init__(self, model: onnx.ModelProto, fp32_weights: dict[str, np.ndarray], weight_range, *,
                 where: str = "model") -> None:
        super().__init__()
        bad = unsupported_ops(model)
        if bad:
            raise EdgequantError(f"{where}: qat cannot interpret op(s) {', '.join(bad)} (supported: "
                                 f"{', '.join(sorted(OPS))}, QuantizeLinear, DequantizeLinear)")
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.input_names = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
        self.output_names = [o.name for o in g.output]
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for node in g.node:
            if node.op_type == "Constant":
                inits[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        self.inits = inits
        producer = {o: n for n in g.node for o in n.output}
        readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for i, name in enumerate(n.input):
                readers.setdefault(name, []).append((n, i))

        self.weights = nn.ModuleDict()
        self.biases = nn.ModuleDict()
        self.scales = nn.ModuleDict()
        self.weight_keys: dict[str, str] = {}      # weight DQ output -> key
        self.bias_of: dict[str, tuple[str, str, str]] = {}  # bias key -> (bias DQ output, in-scale key, weight key)
        self.scale_keys: dict[str, str] = {}       # scale initializer name -> key
        self.qparams: dict[str, tuple[str, np.ndarray, int, int]] = {}  # Q/DQ output -> (zp name, zp, qmin, qmax)
        consts: dict[str, torch.Tensor] = {}
        steps: list[Step] = []

        def scale_key(name: str, qmax: int) -> str:
            if name not in self.scale_keys:
                key = f"s{len(self.scale_keys)}"
                self.scale_keys[name] = key
                self.scales[key] = fq.ActScale(torch.from_numpy(np.array(inits[name], np.float32)), qmax)
            return self.scale_keys[name]

        def zp_of(node: onnx.NodeProto) -> tuple[np.ndarray, int, int]:
            if len(node.input) > 2 and node.input[2]:
                zp = inits[node.input[2]]
                qmin, qmax = fq.TYPE_RANGE[onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)]
                return zp, qmin, qmax
            return np.zeros((), np.uint8), 0, 255

        for node in g.node:
            if node.op_type == "Constant":
                continue
            a = _attrs(node)
            base = Step(node.op_type, node.name, tuple(node.input), tuple(node.output), a)
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                steps.append(self._constant_dq(node, a, inits, readers, producer, fp32_weights, weight_range, base))
            elif node.op_type in QUANT_OPS:
                if node.input[1] not in inits:
                    raise EdgequantError(f"{where}: {node.op_type} {node.name!r} has a computed scale; qat needs "
                                         "constant scales")
                zp, qmin, qmax = zp_of(node)
                key = scale_key(node.input[1], qmax - int(np.max(zp)) if zp.size else qmax)
                self.qparams[node.output[0]] = (node.input[2] if len(node.input) > 2 else "", zp, qmin, qmax)
                steps.append(Step(**{**base.__dict__, "kind": "q" if node.op_type == "QuantizeLinear" else "dq",
                                     "key": key}))
            else:
                steps.append(base)
            for name in node.input:
                if name in inits and name not in consts:
                    consts[name] = torch.from_numpy(np.array(inits[name]))
        for key, (out, in_scale_name, wkey) in list(self.bias_of.items()):
            if in_scale_name not in self.scale_keys:   # the input's DQ reads a constant: its scale stays fixed
                self.scale_keys[in_scale_name] = skey = f"s{len(self.scale_keys)}"
                self.scales[skey] = fq.ActScale(torch.from_numpy(np.array(inits[in_scale_name], np.float32)), 255)
                self.scales[skey].r.requires_grad_(False)
            self.bias_of[key] = (out, self.scale_keys[in_scale_name], wkey)
        self.steps = steps
        self._consts = consts

    # -- constant DequantizeLinear: weight, bias or fixed constant --------------------------------

    def _constant_dq(self, node, a, inits, readers, producer, fp32_weights, weight_range, base: Step) -> Step:
        q = inits[node.input[0]]
        scale = np.asarray(inits[node.input[1]], np.float32)
        zp = np.asarray(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, q.dtype)
        axis = a.get("axis", 1) % q.ndim if scale.ndim == 1 and q.ndim > 1 else None
        out = node.output[0]
        reads = readers.get(out, [])
        fp32 = fp32_weights.get(fp32_name(node.input[0]))
        if q.dtype == np.int32:
            bias = self._bias_site(reads, producer, inits)
            if bias is not None:
                in_scale_name, wkey_src = bias
                key = f"b{len(self.biases)}"
                w_scale = np.asarray(inits[producer[wkey_src].input[1]], np.float32)
                in_scale = np.asarray(inits[in_scale_name], np.float32)
                value = fp32 if fp32 is not None and fp32.shape == q.shape else (q.astype(np.float64) * scale)
                unit = torch.from_numpy((np.broadcast_to(w_scale * in_scale, q.shape) * 128).astype(np.float32))
                self.biases[key] = fq.BiasQuant(torch.from_numpy(np.array(value, np.float32)), unit)
                self.bias_of[key] = (out, in_scale_name, wkey_src)
                return Step(**{**base.__dict__, "kind": "bq", "key": key})
            return base   # an int32 constant not in bias position: stays as it is
        dtype = onnx.helper.np_dtype_to_tensor_dtype(q.dtype)
        if dtype not in fq.TYPE_RANGE:
            return base
        qmin, qmax = fq.TYPE_RANGE[dtype]
        if reads and all(WEIGHT_READERS.get(n.op_type) == i for n, i in reads):
            qmin, qmax = weight_range(dtype)
        qmin, qmax = min(qmin, int(q.min())), max(qmax, int(q.max()))   # never tighter than what PTQ wrote
        zb = zp if axis is None else zp.reshape([-1 if i == axis else 1 for i in range(q.ndim)])
        sb = scale if axis is None else scale.reshape(zb.shape)
        value = (q.astype(np.float32) - zb.astype(np.float32)) * sb
        if fp32 is not None and fp32.shape == q.shape and \
                np.max(np.abs(np.round(fp32 / sb) + zb - q), initial=0) <= 1:   # the weight PTQ rounded
            value = fp32
        key = f"w{len(self.weights)}"
        self.weights[key] = fq.WeightQuant(torch.from_numpy(np.array(value, np.float32)),
                                           torch.from_numpy(np.array(scale, np.float32)),   # a copy: inits are read-only
                                           torch.from_numpy(zp.astype(np.float32)), axis, qmin, qmax)
        self.weight_keys[out] = key
        return Step(**{**base.__dict__, "kind": "wq", "key": key})

    @staticmethod
    def _bias_site(reads, producer, inits) -> tuple[str, str] | None:
        """(input scale initializer, weight DQ output) of the Conv/Gemm reading this bias, when
        its input and weight both come from DequantizeLinear (else the bias stays fixed)."""
        if len(reads) != 1 or reads[0][0].op_type not in ("Conv", "Gemm") or reads[0][1] != 2:
            return None
        reader = reads[0][0]
        x_dq, w_dq = producer.get(reader.input[0]), producer.get(reader.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            return None
        if x_dq.input[1] not in inits or w_dq.input[0] not in inits or w_dq.input[1] not in inits:
            return None
        return x_dq.input[1], reader.input[1]

    # -- running ----------------------------------------------------------------------------------

    def weight_scale(self, wq_output: str) -> torch.Tensor:
        return self.weights[self.weight_keys[wq_output]].scale

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor | None] = dict(zip(self.input_names, inputs))
        env[""] = None
        for step in self.steps:
            if step.kind == "wq":
                env[step.outputs[0]] = self.weights[step.key]()
                continue
            if step.kind == "bq":
                _, in_key, wout = self.bias_of[step.key]
                env[step.outputs[0]] = self.biases[step.key](self.scales[in_key].scale(), self.weight_scale(wout))
                continue
            args = [env[n] if n in env else self._consts[n] for n in step.inputs]
            if step.kind in ("q", "dq"):
                x = args[0]
                _, zp, qmin, qmax = self.qparams[step.outputs[0]]
                s = self.scales[step.key].scale(x)
                z = torch.from_numpy(np.array(zp, np.float32))
                axis = step.attrs.get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None
                env[step.outputs[0]] = (fq.quantize(x, s, z, qmin, qmax, axis) if step.kind == "q"
                                        else fq.dequantize(x, s, z, axis))
                continue
            if step.op == "DequantizeLinear":   # a constant DQ kept fixed (int32 outside bias position)
                q, s = args[0].double(), args[1].double()
                z = args[2].double() if len(args) > 2 and args[2] is not None else torch.zeros(())
                axis = step.attrs.get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None
                env[step.outputs[0]] = fq.dequantize(q, s, z, axis).float()
                continue
            outs = OPS[step.op]([a if a is None or a.is_floating_point() or step.op in _INT_INPUT_OPS else a.float()
                                 for a in args], step.attrs, self.opset)
            for name, value in zip(step.outputs, outs):
                env[name] = value
        return [env[n] for n in self.output_names]


# ops whose integer inputs are shapes/indices/pads, not values
_INT_INPUT_OPS = {"Reshape", "Pad", "Squeeze", "Unsqueeze", "Resize", "Upsample", "ReduceMean", "Clip"}
