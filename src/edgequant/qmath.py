"""Affine quantization math (seed section 1.2, done right).

``q = clip(round(x / scale) + zero_point, qmin, qmax)`` and ``x' = (q - zero_point) * scale``.
Unlike the seed's version this one keeps real 0.0 exactly representable (the range is widened
to include 0, as ONNX requires for zero padding), never divides by zero on a constant tensor,
rounds half to even like ONNX QuantizeLinear, and supports per-channel parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# name -> (qmin, qmax, numpy dtype)
QTYPES: dict[str, tuple[int, int, type]] = {
    "int8": (-128, 127, np.int8),
    "uint8": (0, 255, np.uint8),
    "int16": (-32768, 32767, np.int16),
    "uint16": (0, 65535, np.uint16),
}


def qrange(dtype: str, *, reduce_range: bool = False, symmetric: bool = False) -> tuple[int, int]:
    """Integer range of ``dtype``.

    ``reduce_range`` uses 7 of the 8 bits, which avoids the int16 saturation of VPMADDUBSW on
    x86 CPUs without VNNI. ``symmetric`` signed ranges drop -128 so that +-max map symmetrically.
    """
    if dtype not in QTYPES:
        raise ValueError(f"unknown quantized type {dtype!r}; expected one of {sorted(QTYPES)}")
    qmin, qmax, _ = QTYPES[dtype]
    if reduce_range:
        if dtype not in ("int8", "uint8"):
            raise ValueError("reduce_range applies to 8-bit types only")
        qmin, qmax = (-64, 63) if dtype == "int8" else (0, 127)
    if symmetric and qmin < 0:
        qmin = -qmax
    return qmin, qmax


@dataclass(frozen=True)
class QParams:
    """Quantization parameters; ``scale``/``zero_point`` are scalars or 1-D along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    qmin: int
    qmax: int
    axis: int | None = None

    def _broadcast(self, arr: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None:
            return arr
        shape = [1] * ndim
        shape[self.axis] = -1
        return arr.reshape(shape)


def compute_qparams(
    rmin: float | np.ndarray,
    rmax: float | np.ndarray,
    dtype: str = "int8",
    *,
    symmetric: bool = False,
    reduce_range: bool = False,
    axis: int | None = None,
) -> QParams:
    """Scale and zero point mapping ``[rmin, rmax]`` onto ``dtype``.

    The range is first widened to contain 0 so that real zero is exact. A degenerate range
    (rmin == rmax == 0 after widening) gets scale 1 instead of a division by zero.
    """
    qmin, qmax = qrange(dtype, reduce_range=reduce_range, symmetric=symmetric)
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if np.any(~np.isfinite(rmin)) or np.any(~np.isfinite(rmax)):
        raise ValueError("range contains NaN or Inf")
    if symmetric:
        scale = np.maximum(-rmin, rmax) / ((qmax - qmin) / 2.0)
    else:
        scale = (rmax - rmin) / float(qmax - qmin)
    # A zero (or float32-underflowing) range: any scale represents it exactly; 1.0 avoids
    # dividing by zero later.
    scale = np.where(scale < np.finfo(np.float32).tiny, 1.0, scale)
    if symmetric:
        # Unsigned symmetric uses the mid-point so +-absmax both fit (ORT does the same).
        zp = np.full_like(scale, 0.0 if qmin < 0 else float((qmax + qmin + 1) // 2))
    else:
        zp = np.clip(np.rint(qmin - rmin / scale), qmin, qmax)
    np_dtype = QTYPES[dtype][2]
    return QParams(
        scale=scale.astype(np.float32),
        zero_point=zp.astype(np_dtype),
        dtype=dtype,
        qmin=qmin,
        qmax=qmax,
        axis=axis,
    )


def params_for(
    x: np.ndarray,
    dtype: str = "int8",
    *,
    symmetric: bool = False,
    reduce_range: bool = False,
    axis: int | None = None,
) -> QParams:
    """Min/max parameters of a tensor, per tensor or per channel along ``axis``."""
    x = np.asarray(x, dtype=np.float64)
    if axis is None:
        rmin, rmax = x.min(), x.max()
    else:
        axis = axis % x.ndim
        reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
        rmin, rmax = x.min(axis=reduce_axes), x.max(axis=reduce_axes)
    return compute_qparams(rmin, rmax, dtype, symmetric=symmetric, reduce_range=reduce_range, axis=axis)


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Float -> integer, rounding half to even and clipping out-of-range values."""
    x = np.asarray(x, dtype=np.float64)
    scale = qp._broadcast(qp.scale.astype(np.float64), x.ndim)
    zp = qp._broadcast(qp.zero_point.astype(np.float64), x.ndim)
    q = np.clip(np.rint(x / scale) + zp, qp.qmin, qp.qmax)
    return q.astype(QTYPES[qp.dtype][2])


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Integer -> float32."""
    q = np.asarray(q)
    scale = qp._broadcast(qp.scale.astype(np.float64), q.ndim)
    zp = qp._broadcast(qp.zero_point.astype(np.float64), q.ndim)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


# ---- error metrics -------------------------------------------------------------------------

def max_abs_error(ref: np.ndarray, approx: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(approx, np.float64)), initial=0.0))


def mse(ref: np.ndarray, approx: np.ndarray) -> float:
    d = np.asarray(ref, np.float64) - np.asarray(approx, np.float64)
    return float(np.mean(d * d)) if d.size else 0.0


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when the approximation is exact."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def cosine(ref: np.ndarray, approx: np.ndarray) -> float:
    """Cosine similarity of the flattened tensors; 1.0 for two all-zero tensors."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(approx, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass(frozen=True)
class QuantError:
    max_abs: float
    mse: float
    sqnr_db: float
    cosine: float


def quantization_error(x: np.ndarray, qp: QParams) -> QuantError:
    """Error of the quantize -> dequantize round trip of ``x`` under ``qp``."""
    approx = dequantize(quantize(x, qp), qp)
    return QuantError(max_abs_error(x, approx), mse(x, approx), sqnr_db(x, approx), cosine(x, approx))
