"""MSE range search: per activation tensor, the [rmin, rmax] whose INT8 grid loses least.

Why: min/max (even the robust ranges of :mod:`.ranges`) spends the grid on the extremes; a
narrower range clips a few values and rounds all the others finer. Per tensor the candidates are
shrinks of its base range (the robust range, or global min/max with robust ranges off) on a grid,
low and high side independently (asymmetric); the chosen one minimizes the expected squared
quantization error of the tensor over the calibration samples, with the grid and zero point
exactly as onnxruntime will compute them from that range.

Memory does not grow with the number of samples: each sample is folded into a fixed histogram of
the base range (``BINS`` bins; values are taken as uniform within a bin and the rounding error of
each bin integrated in closed form), exact zeros are counted apart (zero is always on the grid),
and values beyond the base range into three running sums (count, sum, sum of squares of their
distance), which give their clipping error for every candidate exactly. Two passes over the data:
per-sample extremes for the base range (:func:`.ranges.robust_ranges`), then the histograms.
Objective: where every reader of a tensor is a Conv/MatMul/Gemm with constant weights W, the
MSE of their outputs: with rounding errors independent across input channels, the output error
is sum_c ||W[:, c]||^2 * (channel c's error), so each value is counted with its channel's weight
(summed over the readers) and the histogram stays one per tensor. A channel whose large values
the next layer barely uses may then be clipped. Other tensors: their own MSE.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import onnx

from ..qdq.graph import GraphIndex, attribute, expose_tensors

DESCRIPTION = ("MSE range search: each activation's range is the shrink of its robust range (per side) "
               "that minimizes the quantization MSE of its readers' outputs (Conv/MatMul/Gemm; else its own) "
               "on the calibration data")
BINS = 2048
#: Shrink factors tried on each side of the base range (1.0 keeps it).
GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2,
        0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)
QRANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


@dataclass
class _Stats:
    """One tensor's sufficient statistics: constant size, however many samples."""

    lo: float
    hi: float
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS))
    zeros: int = 0
    above: np.ndarray = field(default_factory=lambda: np.zeros(3))   # count, sum d, sum d^2 (d = x - hi)
    below: np.ndarray = field(default_factory=lambda: np.zeros(3))   # same with d = lo - x

    def add(self, a: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Fold in one sample's values; ``weight`` (same shape, optional) counts each value that much."""
        a = np.asarray(a, np.float64).ravel()
        wt = np.ones_like(a) if weight is None else np.asarray(weight, np.float64).ravel()
        nz = a != 0
        self.zeros += int(a.size - nz.sum())
        a, wt = a[nz], wt[nz]
        up, dn = a > self.hi, a < self.lo
        for acc, d, w in ((self.above, a[up] - self.hi, wt[up]), (self.below, self.lo - a[dn], wt[dn])):
            acc += (w.sum(), (w * d).sum(), (w * np.square(d)).sum())
        inside = ~(up | dn)
        width = max(self.hi - self.lo, 1e-30)
        idx = np.clip(((a[inside] - self.lo) * (BINS / width)).astype(np.int64), 0, BINS - 1)
        self.hist += np.bincount(idx, weights=wt[inside], minlength=BINS)


def _saw_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Antiderivative of (x - nearest multiple of step)^2: continuous, step^3 / 12 per period."""
    n = np.floor(x / step + 0.5)
    t = x / step - n
    return step ** 3 * (n / 12 + t ** 3 / 3 + 1 / 24)


def grid_of(rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int,
            symmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, lowest, highest representable value) as onnxruntime's compute_scale_zp makes them."""
    rmin, rmax = np.minimum(rmin, 0.0), np.maximum(rmax, 0.0)
    if symmetric:
        rmax = np.maximum(-rmin, rmax)
        rmin = -rmax
    scale = np.maximum((rmax - rmin) / (qmax - qmin), 1e-30)
    zp = np.round((qmin + qmax) / 2.0) if symmetric else np.round(qmin - rmin / scale)
    return scale, (qmin - zp) * scale, (qmax - zp) * scale


def candidate_errors(stats: _Stats, rmin: np.ndarray, rmax: np.ndarray, qmin: int, qmax: int,
                     symmetric: bool = False) -> np.ndarray:
    """Expected total squared error of quantizing the accumulated values with each (rmin, rmax)."""
    step, low, high = (v[:, None] for v in grid_of(rmin, rmax, qmin, qmax, symmetric))
    edges = np.linspace(stats.lo, stats.hi, BINS + 1)
    a, b = edges[None, :-1], edges[None, 1:]
    mid_lo, mid_hi = np.clip(a, low, high), np.clip(b, low, high)
    inner = _saw_integral(mid_hi, step) - _saw_integral(mid_lo, step)
    under = (np.maximum(low - a, 0) ** 3 - np.maximum(low - b, 0) ** 3) / 3
    over = (np.maximum(b - high, 0) ** 3 - np.maximum(a - high, 0) ** 3) / 3
    per_bin = (inner + under + over) / np.maximum(b - a, 1e-30)
    err = per_bin @ stats.hist
    for acc, gap in ((stats.above, np.maximum(stats.hi - high[:, 0], 0)), (stats.below, np.maximum(low[:, 0] - stats.lo, 0))):
        n, s1, s2 = acc
        err += s2 + 2 * gap * s1 + n * gap ** 2          # sum (d + gap)^2 over the values beyond the base range
    return err


@dataclass(frozen=True)
class SearchedRange:
    rmin: float
    rmax: float
    base: tuple[float, float]
    gain_db: float                 # MSE at the base range / MSE at the chosen one, in dB


@dataclass
class RangeSearch:
    """Per-tensor chosen ranges."""

    ranges: dict[str, SearchedRange] = field(default_factory=dict)
    samples: int = 0
    weighted: int = 0              # tensors whose objective is their readers' output MSE

    @property
    def changed(self) -> dict[str, SearchedRange]:
        return {t: r for t, r in self.ranges.items() if (r.rmin, r.rmax) != r.base}

    def overrides(self, global_ranges: Mapping[str, tuple[float, float]] = {}) -> dict[str, list[dict[str, Any]]]:
        """``TensorQuantOverrides`` for every tensor whose range is not ORT's own min/max."""
        return {t: [{"rmin": np.float32(r.rmin), "rmax": np.float32(r.rmax)}] for t, r in self.ranges.items()
                if (r.rmin, r.rmax) != global_ranges.get(t)}

    def describe(self) -> str:
        changed = self.changed
        if not changed:
            return f"{DESCRIPTION}: every base range kept ({len(self.ranges)} tensors, {self.samples} samples)"
        gains = sorted(r.gain_db for r in changed.values())
        return (f"{DESCRIPTION}: {len(changed)} of {len(self.ranges)} tensor(s) narrowed over {self.samples} "
                f"samples ({self.weighted} judged by their readers' output); MSE lower by median "
                f"{gains[len(gains) // 2]:.1f} dB, up to {gains[-1]:.1f} dB")


#: Weigh values by how much the reading layers use their channel (off: each tensor's own MSE).
CONSUMER_WEIGHTED = True


def consumer_weights(model: onnx.ModelProto) -> dict[str, tuple[int, np.ndarray]]:
    """Tensor -> (channel axis, per-channel weight with mean 1) for tensors read only by
    Conv/MatMul/Gemm layers with constant weights: sum over readers of ||W[:, c]||^2."""
    idx = GraphIndex.build(model.graph)
    out = {}
    for t, readers in idx.consumers.items():
        acc: np.ndarray | None = None
        axis = 1
        for n in readers:
            w = idx.const(n.input[1]) if len(n.input) > 1 and n.input[0] == t else None
            if n.op_type not in ("Conv", "MatMul", "Gemm") or w is None or t in n.input[1:]:
                acc = None
                break
            w = np.asarray(w, np.float64) ** 2
            if n.op_type == "Conv":
                group = attribute(n, "group", 1)
                per = w.reshape(group, w.shape[0] // group, w.shape[1], -1).sum(axis=(1, 3)).ravel()
            elif w.ndim != 2 or any(a.name == "transA" and a.i for a in n.attribute):
                acc = None
                break
            else:
                trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
                per, axis = w.sum(axis=0 if trans_b else 1), -1
            if acc is not None and acc.shape != per.shape:
                acc = None
                break
            acc = per if acc is None else acc + per
        if acc is not None and acc.mean() > 0:
            out[t] = (axis, acc / acc.mean())
    return out


def _broadcast(weight: tuple[int, np.ndarray], a: np.ndarray) -> np.ndarray | None:
    axis, w = weight
    if a.ndim < 2 or a.shape[axis] != w.size:
        return None
    shape = [1] * a.ndim
    shape[axis] = w.size
    return np.broadcast_to(w.reshape(shape), a.shape)


def search_ranges(model_path: str | Path, samples: Iterable[Any], device: Any,
                  base: Mapping[str, tuple[float, float]], *, activation_type: str = "uint8",
                  symmetric: bool = False, grid: tuple[float, ...] = GRID) -> RangeSearch:
    """Stream ``samples`` through ``model_path`` on ``device`` and pick each ``base`` tensor's range."""
    qmin, qmax = QRANGES[activation_type]
    stats = {t: _Stats(float(lo), float(hi)) for t, (lo, hi) in base.items() if hi > lo}
    result = RangeSearch()
    weights = consumer_weights(onnx.load(str(model_path))) if CONSUMER_WEIGHTED else {}
    with tempfile.TemporaryDirectory(prefix="edgequant-mse-") as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        names = expose_tensors(Path(model_path), exposed, set(stats))
        for (values,), _label in device.iter_outputs([exposed], samples, outputs=[names]):
            for name, arr in values.items():
                arr = np.asarray(arr)
                w = _broadcast(weights[name], arr) if name in weights else None
                result.weighted += int(w is not None and result.samples == 0)
                stats[name].add(arr, w)
            result.samples += 1
    f_lo, f_hi = (g.ravel() for g in np.meshgrid(np.asarray(grid), np.asarray(grid)))
    for name in names:
        s = stats[name]
        rmin, rmax = s.lo * f_lo, s.hi * f_hi
        err = candidate_errors(s, rmin, rmax, qmin, qmax, symmetric)
        best = int(np.argmin(err))                      # ties: the first, i.e. the widest range
        gain = 10 * np.log10(max(err[0], 1e-300) / max(err[best], 1e-300)) if err[best] < err[0] else 0.0
        chosen = (float(rmin[best]), float(rmax[best])) if best else (s.lo, s.hi)
        result.ranges[name] = SearchedRange(*chosen, (s.lo, s.hi), float(gain))
    return result
