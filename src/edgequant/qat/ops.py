"""ONNX operators as torch functions (float tensors; the first axis may be a batch of samples that
the graph itself declares as 1: Reshape keeps it). Each handler takes (inputs, attrs, opset) with
``inputs`` torch tensors (or None for an omitted optional input) and returns a tuple of outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import EdgequantError

Handler = Callable[[list, dict, int], tuple]
OPS: dict[str, Handler] = {}


def op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _spatial_pads(x: torch.Tensor, a: dict, kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] with auto_pad resolved against ``x``'s spatial shape."""
    n = len(kernel)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the last n axes -> torch's (last axis first) pairs."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[n + i]]
    return out


@op("Conv")
def conv(inp: list, a: dict, opset: int) -> tuple:
    x, w, b = inp[0], inp[1], inp[2] if len(inp) > 2 else None
    n = w.dim() - 2
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _spatial_pads(x, a, w.shape[2:], strides, dil)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n)
    if fn is None:
        raise EdgequantError(f"Conv with {n} spatial dims is not supported")
    padding: Any = pads[:n] if pads[:n] == pads[n:] else 0
    if padding == 0 and any(pads):
        x = F.pad(x, _torch_pad(pads))
    return (fn(x, w, b, stride=strides, padding=padding, dilation=dil, groups=a.get("group", 1)),)


@op("ConvTranspose")
def conv_transpose(inp: list, a: dict, opset: int) -> tuple:
    x, w, b = inp[0], inp[1], inp[2] if len(inp) > 2 else None
    n = w.dim() - 2
    auto = a.get("auto_pad", b"NOTSET")
    if a.get("output_shape") or (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET":
        raise EdgequantError("ConvTranspose with output_shape or auto_pad is not supported")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(n)
    if fn is None:
        raise EdgequantError(f"ConvTranspose with {n} spatial dims is not supported")
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = list(a.get("pads", [0] * (2 * n)))
    extra = a.get("output_padding", [0] * n)
    if pads[:n] == pads[n:]:
        return (fn(x, w, b, stride=strides, padding=pads[:n], output_padding=extra, groups=a.get("group", 1),
                   dilation=dil),)
    # uneven pads: the full output, then the ONNX crop at each end
    y = fn(x, w, b, stride=strides, padding=0, output_padding=extra, groups=a.get("group", 1), dilation=dil)
    return (y[(slice(None), slice(None)) + tuple(slice(pads[i], y.shape[2 + i] - pads[n + i]) for i in range(n))],)


@op("BatchNormalization")
def batch_norm(inp: list, a: dict, opset: int) -> tuple:
    """Inference form (running statistics); a graph exported for training is not what QAT starts from."""
    x, scale, bias, mean, var = inp[:5]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    inv = scale / torch.sqrt(var + a.get("epsilon", 1e-5))
    return (x * inv.reshape(shape) + (bias - mean * inv).reshape(shape),)


def _pool(x: torch.Tensor, a: dict, kind: str) -> torch.Tensor:
    kernel = a["kernel_shape"]
    n = len(kernel)
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _spatial_pads(x, a, kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        if any(pads):
            x = F.pad(x, _torch_pad(pads), value=-math.inf)
        return fn(x, kernel, strides, 0, dil, ceil_mode=ceil)
    if any(d != 1 for d in dil):
        raise EdgequantError("AveragePool with dilations is not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    if not any(pads):
        return fn(x, kernel, strides, 0, ceil_mode=ceil)
    xp = F.pad(x, _torch_pad(pads))
    if a.get("count_include_pad", 0):
        return fn(xp, kernel, strides, 0, ceil_mode=ceil)
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return fn(xp, kernel, strides, 0, ceil_mode=ceil) / fn(ones, kernel, strides, 0, ceil_mode=ceil)


@op("MaxPool")
def maxpool(inp: list, a: dict, opset: int) -> tuple:
    return (_pool(inp[0], a, "max"),)


@op("AveragePool")
def avgpool(inp: list, a: dict, opset: int) -> tuple:
    return (_pool(inp[0], a, "avg"),)


@op("GlobalAveragePool")
def gap(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    return (x.mean(dim=tuple(range(2, x.dim())), keepdim=True),)


@op("GlobalMaxPool")
def gmp(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    return (x.amax(dim=tuple(range(2, x.dim())), keepdim=True),)


@op("Pad")
def pad(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if opset < 11:
        pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), None
    else:
        pads = ints(inp[1])
        value = float(inp[2].reshape(-1)[0]) if len(inp) > 2 and inp[2] is not None and inp[2].numel() else 0.0
        axes = ints(inp[3]) if len(inp) > 3 and inp[3] is not None else None
    if axes is not None:   # opset 18: pads only for the listed axes
        full = [0] * (2 * x.dim())
        for i, ax in enumerate(axes):
            full[ax % x.dim()], full[x.dim() + ax % x.dim()] = pads[i], pads[len(axes) + i]
        pads = full
    n = len(pads) // 2
    first = next((i for i in range(n) if pads[i] or pads[n + i]), n)   # torch pads trailing axes only
    tp = _torch_pad(pads[first:n] + pads[n + first:])
    if mode == "constant":
        return (F.pad(x, tp, value=value),)
    torch_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise EdgequantError(f"Pad mode {mode!r} is not supported")
    return (F.pad(x, tp, mode=torch_mode),)


@op("Concat")
def concat(inp: list, a: dict, opset: int) -> tuple:
    return (torch.cat([t for t in inp if t is not None], dim=a["axis"]),)


@op("Reshape")
def reshape(inp: list, a: dict, opset: int) -> tuple:
    x, shape = inp[0], ints(inp[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 and i < x.dim() else s for i, s in enumerate(shape)]
    if shape and shape[0] == 1 and x.dim() and x.shape[0] != 1:
        shape[0] = x.shape[0]   # the graph's batch of 1 is a batch of samples here
    return (x.reshape(shape),)


@op("Flatten")
def flatten(inp: list, a: dict, opset: int) -> tuple:
    x, axis = inp[0], a.get("axis", 1) % max(inp[0].dim(), 1)
    return (x.reshape(math.prod(x.shape[:axis]), -1),)


@op("Transpose")
def transpose(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    return (x.permute(a.get("perm", list(reversed(range(x.dim()))))),)


def _squeeze(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    axes = ints(inp[1]) if len(inp) > 1 and inp[1] is not None else list(a.get("axes", []))
    if not axes:
        return (x.squeeze(),)
    return (x.squeeze(tuple(ax % x.dim() for ax in axes)),)


def _unsqueeze(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    axes = ints(inp[1]) if len(inp) > 1 and inp[1] is not None else list(a.get("axes", []))
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return (x,)


OPS["Squeeze"], OPS["Unsqueeze"] = _squeeze, _unsqueeze


def _binary(fn: Callable) -> Handler:
    return lambda inp, a, opset: (fn(inp[0], inp[1]),)


OPS.update({"Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
            "Div": _binary(torch.div), "MatMul": _binary(torch.matmul), "Max": _binary(torch.maximum),
            "Min": _binary(torch.minimum), "Pow": _binary(torch.pow)})
OPS.update({"Relu": lambda inp, a, o: (F.relu(inp[0]),), "Sigmoid": lambda inp, a, o: (torch.sigmoid(inp[0]),),
            "Tanh": lambda inp, a, o: (torch.tanh(inp[0]),), "Exp": lambda inp, a, o: (torch.exp(inp[0]),),
            "Sqrt": lambda inp, a, o: (torch.sqrt(inp[0]),), "Neg": lambda inp, a, o: (-inp[0],),
            "Abs": lambda inp, a, o: (torch.abs(inp[0]),), "Identity": lambda inp, a, o: (inp[0],),
            "Erf": lambda inp, a, o: (torch.erf(inp[0]),),
            "HardSwish": lambda inp, a, o: (F.hardswish(inp[0]),)})


@op("LeakyRelu")
def leaky(inp: list, a: dict, opset: int) -> tuple:
    return (F.leaky_relu(inp[0], a.get("alpha", 0.01)),)


@op("PRelu")
def prelu(inp: list, a: dict, opset: int) -> tuple:
    x, slope = inp
    return (torch.where(x >= 0, x, x * slope),)


@op("HardSigmoid")
def hardsigmoid(inp: list, a: dict, opset: int) -> tuple:
    return (torch.clamp(inp[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),)


@op("Clip")
def clip(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    if opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = float(inp[1]) if len(inp) > 1 and inp[1] is not None else None
        hi = float(inp[2]) if len(inp) > 2 and inp[2] is not None else None
    return (torch.clamp(x, lo, hi),)


def _softmax_like(fn: Callable) -> Handler:
    def run(inp: list, a: dict, opset: int) -> tuple:
        x = inp[0]
        if opset >= 13:
            return (fn(x, dim=a.get("axis", -1)),)
        axis = a.get("axis", 1) % x.dim()   # before opset 13: over everything from axis on
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return (fn(flat, dim=1).reshape(x.shape),)
    return run


OPS["Softmax"], OPS["LogSoftmax"] = _softmax_like(torch.softmax), _softmax_like(torch.log_softmax)


@op("Gemm")
def gemm(inp: list, a: dict, opset: int) -> tuple:
    x, w = inp[0], inp[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(inp) > 2 and inp[2] is not None:
        y = y + a.get("beta", 1.0) * inp[2]
    return (y,)


@op("ReduceMean")
def reduce_mean(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    axes = ints(inp[1]) if len(inp) > 1 and inp[1] is not None else list(a.get("axes", range(x.dim())))
    return (x.mean(dim=tuple(axes), keepdim=bool(a.get("keepdims", 1))),)


@op("Resize", "Upsample")
def resize(inp: list, a: dict, opset: int) -> tuple:
    x = inp[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel" if opset >= 11 else b"asymmetric")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    scales = inp[2] if opset >= 11 and len(inp) > 2 else (inp[1] if len(inp) > 1 else None)
    sizes = inp[3] if opset >= 11 and len(inp) > 3 else None
    size = [int(v) for v in sizes.tolist()[2:]] if sizes is not None and sizes.numel() else None
    factors = [float(v) for v in scales.tolist()[2:]] if size is None and scales is not None else None
    if mode == "nearest" and ctm == "asymmetric" and a.get("nearest_mode", b"floor") in (b"floor", "floor"):
        return (F.interpolate(x, size=size, scale_factor=factors, mode="nearest"),)
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners") and x.dim() == 4:
        return (F.interpolate(x, size=size, scale_factor=factors, mode="bilinear",
                              align_corners=ctm == "align_corners"),)
    raise EdgequantError(f"Resize mode={mode} coordinate_transformation_mode={ctm} is not supported")
