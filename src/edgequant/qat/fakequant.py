"""Fake quantization in torch with onnxruntime's exact QuantizeLinear/DequantizeLinear arithmetic.

Forward: ``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` in float32 (ORT's MLAS
kernel: divide, round to nearest even, add the zero point, saturate), ``x' = (q - zp) * scale``.
Backward: straight-through rounding. Chaining the two with the same learnable scale gives LSQ's
scale gradient (Esser et al. 2019: ``round(x/s) - x/s`` inside the range, ``qmin - zp`` or
``qmax - zp`` outside); ``grad_scale`` adds LSQ's gradient scale 1 / sqrt(N * qmax).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: ONNX integer element types -> (qmin, qmax) of the whole type.
TYPE_RANGE = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767), 6: (-2**31, 2**31 - 1)}


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (torch.round, like ORT), identity gradient."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` forward, gradient multiplied by ``g`` (LSQ's trick)."""
    return (x - x * g).detach() + x * g


def broadcast(param: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """A per-channel (1-D) parameter shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if param.dim() == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
             axis: int | None = None) -> torch.Tensor:
    """QuantizeLinear as float integers (differentiable: STE rounding, saturation)."""
    s, z = broadcast(scale, x.dim(), axis), broadcast(zp, x.dim(), axis)
    return torch.clamp(round_ste(x / s) + z, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """DequantizeLinear of float integers."""
    return (q - broadcast(zp, q.dim(), axis)) * broadcast(scale, q.dim(), axis)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
               axis: int | None = None) -> torch.Tensor:
    return dequantize(quantize(x, scale, zp, qmin, qmax, axis), scale, zp, axis)


class ActScale(nn.Module):
    """One activation scale initializer of the QDQ graph (shared by every Q/DQ that names it),
    learned as ``scale = ptq_scale * r``: LSQ's gradient, in a parametrization relative to the PTQ
    value so that one Adam learning rate fits scales that differ by orders of magnitude."""

    def __init__(self, ptq_scale: torch.Tensor, qmax: int) -> None:
        super().__init__()
        self.register_buffer("ptq", ptq_scale.detach().clone().float())
        self.r = nn.Parameter(torch.ones_like(self.ptq))
        self.qmax = max(abs(qmax), 1)

    def scale(self, x: torch.Tensor | None = None) -> torch.Tensor:
        s = self.ptq * torch.clamp(self.r, min=1e-3)
        if x is None or not self.training:
            return s
        per_sample = max(x[0].numel() if x.dim() > 0 else 1, 1)
        return grad_scale(s, 1.0 / math.sqrt(per_sample * self.qmax))


class WeightQuant(nn.Module):
    """A constant weight behind a DequantizeLinear: trainable, fake-quantized with the PTQ model's
    fixed scale, zero point, axis and integer range. Stored in units of its quantization step
    (``w = scale * u``), so the learning rate is in steps whatever the layer's magnitude."""

    def __init__(self, w_float: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None,
                 qmin: int, qmax: int) -> None:
        super().__init__()
        self.axis, self.qmin, self.qmax = axis, qmin, qmax
        self.register_buffer("scale", scale.float())
        self.register_buffer("zp", zp.float())
        self.u = nn.Parameter(w_float.float() / broadcast(self.scale, w_float.dim(), axis))

    def integers(self) -> torch.Tensor:
        """The weight's integers (what export writes), STE-differentiable."""
        return torch.clamp(round_ste(self.u) + broadcast(self.zp, self.u.dim(), self.axis), self.qmin, self.qmax)

    def forward(self) -> torch.Tensor:
        return dequantize(self.integers(), self.scale, self.zp, self.axis)


class BiasQuant(nn.Module):
    """An int32 bias of Conv/Gemm: float while training, fake-quantized at the scale the export will
    write, ``input scale * weight scale`` (so it follows the learned input scale)."""

    def __init__(self, b_float: torch.Tensor, unit: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("unit", unit.float())    # step of the parameter: a weight step times a mid-range input
        self.v = nn.Parameter(b_float.float() / self.unit)

    def value(self) -> torch.Tensor:
        return self.v * self.unit

    def forward(self, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        s = (in_scale * w_scale).detach()
        lo, hi = TYPE_RANGE[6]
        return torch.clamp(round_ste(self.value() / s), lo, hi) * s
