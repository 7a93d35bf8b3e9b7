"""Histogram calibration (percentile, entropy, distribution) in memory that does not grow with the
number of calibration samples.

Why: onnxruntime's ``HistogramCalibrater`` keeps every intermediate tensor of every sample until
the end (resnet18: ~30 MB per sample, 8 GB at 256 samples). Here samples stream through the device
one at a time and each tensor keeps one fixed-size histogram.

Re-binning: a tensor's histogram covers [-T, T] with ``FINE_BINS`` (even) bins, T set by the first
non-zero sample. When a sample exceeds T, T grows by an integer factor k, so every old bin lies
inside exactly one new bin (edges are multiples of the bin width around 0) and merging k old bins
into one new bin is exact: the streamed histogram equals a one-shot histogram over the final
range. T stays below 2x the data's absmax, so the fine bins stay at least 2x narrower than
onnxruntime's narrowest (percentile: 2048 bins over |x|).

Ranges follow onnxruntime's definitions (``onnxruntime.quantization.calibrate``, ORT's defaults
as ``quantize_static`` uses them, which passes no bin counts): its one-shot histogram over all
samples is rebuilt from the fine one (cumulative counts interpolated at its edges) and its rule
applied, so results agree with ORT's within one of ORT's bins:

- percentile (2048 bins, symmetric by default): the bin edge where the CDF of |x| reaches p
  (asymmetric: (100-p)/2 % cut from each side of x), clamped to the observed min/max;
- entropy (128 bins, 128 quantized bins): the KL-divergence threshold search of TensorRT's
  calibrator as ORT implements it (with ORT's defaults the search has a single candidate, the
  absmax, so the range is the observed min/max);
- distribution: [-absmax, absmax] (what ORT's int8/int16 quantizer reads from it).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..qdq.graph import expose_tensors

METHODS = ("percentile", "entropy", "distribution")
FINE_BINS = 16384
CHUNK = 1 << 20
#: onnxruntime's defaults per method: (bins, quantized bins for the KL search)
ORT_BINS = {"percentile": (2048, 0), "entropy": (128, 128), "distribution": (2048, 0)}


class StreamingHistogram:
    """A signed histogram of one tensor over [-half, half], updated per sample, plus min/max/min|x|."""

    def __init__(self, bins: int = FINE_BINS) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.half = 0.0
        self.counts = np.zeros(bins, np.int64)
        self.lo, self.hi, self.amin = math.inf, -math.inf, math.inf
        self.count = 0

    @property
    def absmax(self) -> float:
        return max(-self.lo, self.hi, 0.0) if self.count else 0.0

    def edges(self) -> np.ndarray:
        return np.linspace(-self.half, self.half, self.bins + 1)

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size and not np.isfinite(x).all():
            x = x[np.isfinite(x)]  # ORT's nanmin/nanmax skip NaN too; inf has no bin
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.amin = min(self.amin, float(np.abs(x).min()))
        self.count += x.size
        amax = max(-lo, hi)
        if amax > self.half:
            self._grow(amax)
        if self.half == 0.0:       # all zeros so far: they sit in the bin right of 0
            self.counts[self.bins // 2] += x.size
            return
        scale = self.bins / (2.0 * self.half)
        for start in range(0, x.size, CHUNK):  # float64/int64 temporaries of a chunk, not of the tensor
            idx = np.floor((x[start:start + CHUNK].astype(np.float64) + self.half) * scale).astype(np.int64)
            np.clip(idx, 0, self.bins - 1, out=idx)
            self.counts += np.bincount(idx, minlength=self.bins)

    def _grow(self, amax: float) -> None:
        if self.half == 0.0:
            self.half = amax  # the zero-bin counts stay where they are: bin bins//2 starts at 0
            return
        k = math.ceil(amax / self.half)
        while k * self.half < amax:  # float rounding of the division
            k += 1
        mid = self.bins // 2
        old = np.arange(self.bins) - mid          # old bin j spans [j, j+1) * w around 0
        target = mid + np.floor_divide(old, k)    # ... and lies inside new bin floor(j/k) (width k*w)
        self.counts = np.bincount(target, weights=self.counts, minlength=self.bins).round().astype(np.int64)
        self.half *= k

    def abs_quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of |x|, interpolated inside the bin where the count reaches it."""
        if not self.count:
            return 0.0
        edges = np.linspace(self.amin, self.absmax, self.bins // 2 + 1)
        cum = np.concatenate([[0.0], np.cumsum(self.resample(edges, absolute=True))])
        return float(np.interp(q * cum[-1], cum, edges))

    def resample(self, edges: np.ndarray, *, absolute: bool = False) -> np.ndarray:
        """Counts on other ``edges`` (of x, or of |x|): the cumulative count interpolated at each
        edge, i.e. values spread evenly inside a fine bin, which is first cut to the observed data
        range (so nothing is spread past the min or max and the total stays exact)."""
        if absolute:
            mid = self.bins // 2
            counts = self.counts[mid:] + self.counts[:mid][::-1]
            fine = np.clip(np.linspace(0.0, self.half, mid + 1), self.amin, self.absmax)
        else:
            counts, fine = self.counts, np.clip(self.edges(), self.lo, self.hi)
        cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
        if self.half == 0.0:  # every value was 0
            cum_at = np.where(np.asarray(edges) >= 0.0, float(cum[-1]), 0.0)
        else:
            cum_at = np.interp(edges, fine, cum)
        return np.diff(cum_at)


# ---- ranges, as onnxruntime defines them ----------------------------------------------------

def _clamp(h: StreamingHistogram, lo: float, hi: float) -> tuple[float, float]:
    return max(lo, h.lo), min(hi, h.hi)


def percentile_range(h: StreamingHistogram, percentile: float = 99.999, *, symmetric: bool = True,
                     bins: int = ORT_BINS["percentile"][0]) -> tuple[float, float]:
    """ORT's percentile rule on its ``bins``-bin one-shot histogram."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if symmetric:  # ORT: histogram of |x| between the smallest and the largest |x|
        edges = np.linspace(h.amin, h.absmax, bins + 1)
        cdf = _cdf(h.resample(edges, absolute=True))
        t = float(edges[min(np.searchsorted(cdf, percentile / 100.0), bins)])
        return _clamp(h, -t, t)
    edges = np.linspace(-h.absmax, h.absmax, bins + 1)
    cdf = _cdf(h.resample(edges))
    cut = (100.0 - percentile) / 200.0
    lo_i, hi_i = (min(int(np.searchsorted(cdf, c)), bins) for c in (cut, 1.0 - cut))
    return _clamp(h, float(edges[lo_i]), float(edges[hi_i]))


def _cdf(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return np.cumsum(counts / total) if total > 0 else np.ones_like(counts)


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Zeros become ``eps``, taken evenly off the non-zero entries (so KL stays finite)."""
    zeros = p == 0
    nonzero = p.size - int(zeros.sum())
    if nonzero == 0:
        return None
    return np.where(zeros, eps, p - eps * (p.size - nonzero) / nonzero).astype(np.float32)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    if np.any(q <= 0) or np.any(p < 0):
        return math.inf
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_range(h: StreamingHistogram, *, bins: int = ORT_BINS["entropy"][0],
                  quantized_bins: int = ORT_BINS["entropy"][1]) -> tuple[float, float]:
    """The threshold pair whose ``quantized_bins``-level quantization loses the least information
    (KL divergence between the clipped histogram and its quantized version), as ORT searches it:
    windows of bins around the centre bin, growing one bin per side per candidate."""
    edges = np.linspace(-h.absmax, h.absmax, bins + 1)
    hist = h.resample(edges)
    centre, half_q = bins // 2, quantized_bins // 2
    best, best_div = (float(edges[0]), float(edges[-1])), math.inf
    for i in range(half_q, centre + 1):
        start, end = centre - i, min(centre + i + 1, bins)
        window = hist[start:end]
        p = window.copy()
        p[0] += hist[:start].sum()      # clipped values count at the window's ends
        p[-1] += hist[end:].sum()
        per = window.size // quantized_bins
        merged = window[: per * quantized_bins].reshape(quantized_bins, per).sum(axis=1)
        merged[-1] += window[per * quantized_bins:].sum()
        used = (p[: per * quantized_bins] != 0).reshape(quantized_bins, per).sum(axis=1)
        q = np.zeros_like(p)
        # ORT spreads each level's count over its non-empty bins (integer division), leftovers get 0
        level = np.where(used > 0, np.floor(merged / np.maximum(used, 1)), 0.0)
        q[: per * quantized_bins] = np.repeat(level, per)
        ps, qs = _smooth(p), _smooth(q)
        div = math.inf if ps is None or qs is None else _kl(ps.astype(np.float64), qs.astype(np.float64))
        if div < best_div:
            best, best_div = (float(edges[start]), float(edges[end])), div
    return _clamp(h, *best)


def distribution_range(h: StreamingHistogram) -> tuple[float, float]:
    """ORT's distribution calibrator hands int8/int16 quantization its histogram's edges: +-absmax."""
    return -h.absmax, h.absmax


def tensor_range(h: StreamingHistogram, method: str, *, percentile: float = 99.999,
                 symmetric: bool = True, bins: int | None = None, quantized_bins: int | None = None
                 ) -> tuple[float, float]:
    """(rmin, rmax) of one tensor by ``method`` (ORT's bin counts unless given)."""
    default_bins, default_q = ORT_BINS[method]
    bins = bins or default_bins
    if method == "percentile":
        return percentile_range(h, percentile, symmetric=symmetric, bins=bins)
    if method == "entropy":
        return entropy_range(h, bins=bins, quantized_bins=quantized_bins or default_q)
    return distribution_range(h)


# ---- streaming calibration ------------------------------------------------------------------

@dataclass
class HistogramRanges:
    """Per-tensor ranges of one histogram method, and how they were obtained."""

    method: str
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: int = 0
    percentile: float | None = None

    def overrides(self) -> dict[str, list[dict[str, Any]]]:
        """onnxruntime ``TensorQuantOverrides`` entries (rmin/rmax) for every calibrated tensor."""
        return {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in self.ranges.items()}

    def describe(self) -> str:
        """One line for the report."""
        what = f"{self.method} {self.percentile:g}" if self.percentile is not None else self.method
        return (f"{what} ranges of {len(self.ranges)} tensors from streaming histograms over {self.samples} "
                f"calibration samples (memory independent of the sample count)")


def collect(model_path: str | Path, samples: Iterable[Any], device: Any, *, tensors: Iterable[str] | None = None,
            bins: int = FINE_BINS, on_sample: Callable[[int], None] | None = None
            ) -> tuple[dict[str, StreamingHistogram], int]:
    """One streaming histogram per float activation of ``model_path`` over ``samples`` (run on
    ``device`` one sample at a time); returns them and the number of samples."""
    hists: dict[str, StreamingHistogram] = {}
    count = 0
    with tempfile.TemporaryDirectory(prefix="edgequant-hist-") as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        names = expose_tensors(Path(model_path), exposed, tensors)
        for (values,), _label in device.iter_outputs([exposed], samples, outputs=[names]):
            if on_sample is not None:
                on_sample(count)
            for name, arr in values.items():
                if np.issubdtype(np.asarray(arr).dtype, np.floating):
                    hists.setdefault(name, StreamingHistogram(bins)).add(arr)
            del values  # this sample's tensors go before the next sample's arrive
            count += 1
    return hists, count


def histogram_ranges(model_path: str | Path, samples: Iterable[Any], device: Any, method: str, *,
                     percentile: float = 99.999, symmetric: bool = True, tensors: Iterable[str] | None = None,
                     on_sample: Callable[[int], None] | None = None, **bin_counts: int) -> HistogramRanges:
    """Ranges of every float activation by ``method`` (percentile, entropy or distribution)."""
    if method not in METHODS:
        raise ValueError(f"unknown histogram method {method!r}; expected one of {', '.join(METHODS)}")
    hists, count = collect(model_path, samples, device, tensors=tensors, on_sample=on_sample)
    return ranges_of(hists, method, count, percentile=percentile, symmetric=symmetric, **bin_counts)


def ranges_of(hists: Mapping[str, StreamingHistogram], method: str, samples: int, *, percentile: float = 99.999,
              symmetric: bool = True, **bin_counts: int) -> HistogramRanges:
    out = HistogramRanges(method, samples=samples, percentile=percentile if method == "percentile" else None)
    for name, h in hists.items():
        if h.count:
            out.ranges[name] = tensor_range(h, method, percentile=percentile, symmetric=symmetric, **bin_counts)
    return out
