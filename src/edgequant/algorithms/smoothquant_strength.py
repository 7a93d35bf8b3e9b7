"""How strongly to smooth each activation: SmoothQuant's migration strength alpha chosen per site by
the INT8 error it leaves in the readers' outputs, simulated in numpy on calibration rows.

Why per site: one alpha for the whole model (the paper's 0.5) is a compromise that can be worse
than no smoothing at all. On the HF ``BertModel`` export (MiniLM-L6 weights, real text) the GELU
outputs feeding each FFN's second MatMul keep 22-25 dB unsmoothed, 19-22 dB at 0.5 and 28-30 dB at
0.8-0.9, while the LayerNorm outputs gain at every alpha; end to end, dynamic INT8 went from cosine
0.987 to 0.980 with 0.5 everywhere and to 0.995 with the per-site choice.

The readers see only X / s and W * s, so the error of X W is local to the site: for each candidate
alpha (and none) the kept rows are quantized as the quantizer will (uint8 affine over the range a
sample reaches -- per call in dynamic mode, over the calibration set in static mode; weights
symmetric, per output channel or per tensor) and the summed squared error of every reader's output
is compared. Per-channel minima and maxima per sample make the range of X / s exact for any s
without keeping whole tensors; only up to :data:`ROWS` rows are kept for the error itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..qmath import compute_qparams, dequantize, quantize

ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
ROWS = 1024                  # calibration rows (tokens) kept per site for the simulated error, at most
ROW_BUDGET = 64 * 2 ** 20    # values kept over all sites (256 MB of float32): wide models keep fewer rows
_MIN_ROWS = 64
_S_LIMITS = (1e-5, 1e5)


@dataclass
class SiteStats:
    """What the strength search needs of one activation, gathered sample by sample."""

    amax: np.ndarray | None = None                 # per channel max |x| over every sample
    lo: np.ndarray | None = None                   # per channel min over every sample (static range)
    hi: np.ndarray | None = None                   # per channel max over every sample
    rows: list[np.ndarray] = field(default_factory=list)               # kept rows, per sample
    ranges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # that sample's channel min/max
    max_rows: int = ROWS

    def add(self, x: np.ndarray) -> None:
        flat = np.asarray(x).reshape(-1, x.shape[-1])
        lo, hi = flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self.amax = np.maximum(np.abs(self.lo), np.abs(self.hi))
        room = self.max_rows - sum(len(r) for r in self.rows)
        if room > 0:
            self.rows.append(flat[:room].astype(np.float32))
            self.ranges.append((lo, hi))


def rows_per_site(channels: list[int]) -> int:
    """Rows each site may keep so that all of them together stay within :data:`ROW_BUDGET` values."""
    total = sum(channels)
    return max(_MIN_ROWS, min(ROWS, ROW_BUDGET // total)) if total else ROWS


@dataclass(frozen=True)
class Strength:
    """The choice for one site: ``alpha`` None = leave it alone; errors are relative MSE of the readers."""

    alpha: float | None
    factors: np.ndarray | None       # s_k (x is divided, the weights' rows multiplied)
    error_before: float
    error_after: float

    @property
    def gain_db(self) -> float:
        return 10.0 * np.log10(self.error_before / self.error_after) if self.error_after > 0 else float("inf")


def factors(amax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_k = max|x_k|^alpha / max|W_k|^(1 - alpha), at least the median s (1 where a channel is all zero).

    The floor: only channels above the median are shrunk, no quiet one is amplified. A channel
    quiet on the calibration set and amplified by 1 / s stretches the per-call range whenever it
    spikes at run time; on the HF BertModel, calibrated on Python-reference texts and evaluated on
    other English, the worst sample's cosine was 0.982 without the floor and 0.997 with it
    (mean SQNR 18.5 -> 23.4 dB; on texts like the calibration set 22.2 -> 22.7 dB)."""
    ok = (amax > 0) & (wmax > 0)
    s = np.where(ok, np.where(ok, amax, 1.0) ** alpha / np.where(ok, wmax, 1.0) ** (1.0 - alpha), 1.0)
    s = np.maximum(s, np.median(s[ok])) if ok.any() else s
    return np.clip(s, *_S_LIMITS)


def _fake_quant_rows(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 affine quantize-dequantize over [lo, hi] (widened to hold 0, as ORT's quantizers do)."""
    qp = compute_qparams(lo, hi, "uint8")
    return dequantize(quantize(x, qp), qp)


def _fake_quant_weight(w: np.ndarray, reduce_range: bool, per_channel: bool) -> np.ndarray:
    """Symmetric int8 weights (7-bit with ``reduce_range``), per output column (w is [K, N]) or per tensor."""
    amax = np.abs(w).max(axis=0) if per_channel else np.abs(w).max()
    qp = compute_qparams(-amax, amax, "int8", symmetric=True, reduce_range=reduce_range,
                         axis=1 if per_channel else None)
    return dequantize(quantize(w, qp), qp)


def reader_error(stats: SiteStats, weights: list[np.ndarray], s: np.ndarray, *, dynamic: bool,
                 reduce_range: bool = False, per_channel: bool = True) -> float:
    """Relative squared error of every reader's output X W when X / s and W * s are quantized."""
    err = ref_energy = 0.0
    quantized = [_fake_quant_weight(w * s[:, None], reduce_range, per_channel) for w in weights]
    for kept, (lo, hi) in zip(stats.rows, stats.ranges):
        rows = kept.astype(np.float64)
        if dynamic:      # the range this call's tensor reaches
            qlo, qhi = float((lo / s).min()), float((hi / s).max())
        else:            # one range for every call, from the calibration set
            qlo, qhi = float((stats.lo / s).min()), float((stats.hi / s).max())
        xq = _fake_quant_rows(rows / s, qlo, qhi)
        for w, wq in zip(weights, quantized):
            ref = rows @ w
            err += float(np.square(ref - xq @ wq).sum())
            ref_energy += float(np.square(ref).sum())
    return err / ref_energy if ref_energy > 0 else 0.0


def choose_strength(stats: SiteStats, weights: list[np.ndarray], *, dynamic: bool, reduce_range: bool = False,
                    per_channel: bool = True, min_gain_db: float = 0.1,
                    alphas: tuple[float, ...] = ALPHAS) -> Strength:
    """The alpha (or none) whose simulated reader error is lowest; none unless it gains ``min_gain_db``.

    ``weights`` are the readers' constant weights as [K, N] (K = the site's channels)."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    kw = dict(dynamic=dynamic, reduce_range=reduce_range, per_channel=per_channel)
    before = reader_error(stats, weights, np.ones_like(wmax), **kw)
    best = Strength(None, None, before, before)
    for alpha in alphas:
        s = factors(stats.amax, wmax, alpha)
        after = reader_error(stats, weights, s, **kw)
        if after < best.error_after:
            best = Strength(alpha, s, before, after)
    if best.alpha is None or best.gain_db < min_gain_db:
        return Strength(None, None, before, before)
    return best
