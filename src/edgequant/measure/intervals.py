"""How sure a verdict is: 95% Wilson score intervals for proportions measured on few samples.

A budget of 0.99 agreement judged on 32 samples allows zero flips and still cannot tell 0.99 from
0.90: 32/32 has a Wilson interval of 0.89-1.00. The budget (``verdict``) therefore passes a
proportion only when its interval's lower end clears the threshold, and reports how many samples
a decision would need at the observed rate.

The unit is the evaluation *sample*: per-position (sequence) and per-anchor (detection) rates are
averages over many correlated positions of one sample, so their interval uses the sample count as
the effective number of trials (conservative; positions as trials would overstate certainty).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Z95 = 1.959963984540054
#: ``samples_needed`` stops searching here (a rate this close to its threshold is never decided).
MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``trials`` (successes may be fractional: a mean rate times the sample count)."""

    successes: float
    trials: int
    unit: str = "samples"

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    def interval(self, z: float = Z95) -> tuple[float, float]:
        return wilson(self.successes, self.trials, z)

    def to_dict(self) -> dict:
        lo, hi = self.interval()
        return {"successes": round(self.successes, 6), "trials": self.trials, "unit": self.unit, "ci95": [lo, hi]}


def wilson(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (0-1 for no trials; fractional counts allowed)."""
    if trials <= 0:
        return 0.0, 1.0
    n = float(trials)
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _smallest_n(decided: Callable[[int], bool], start: int) -> int | None:
    """Smallest n >= start with ``decided(n)`` (monotone in n), or None below ``MAX_SAMPLES``."""
    if decided(start):
        return start
    if not decided(MAX_SAMPLES):
        return None
    lo, hi = start, MAX_SAMPLES
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return hi


def samples_needed(rate: float, threshold: float, start: int = 1, z: float = Z95) -> int | None:
    """Fewest samples at which ``rate``, if it held, would have a Wilson lower end >= ``threshold``.

    None when no number would do: the observed rate itself does not clear the threshold.
    """
    if not rate > threshold:
        return None
    return _smallest_n(lambda n: wilson(rate * n, n, z)[0] >= threshold, max(1, start))


def paired_drop_interval(lost: float, gained: float, both: float, neither: float,
                         z: float = Z95) -> tuple[float, float, float]:
    """(drop, low, high): a 95% interval for ``p_reference - p_candidate`` measured on the same samples.

    Newcombe's method 10 (Stat. Med. 1998), built from the two Wilson intervals and the correlation
    of the paired outcomes: ``lost`` = right under FP32 and wrong under the candidate, ``gained``
    the reverse. Identical predictions on many samples give a narrow interval around 0, where two
    independent intervals of the accuracies would never decide a 1% budget.
    """
    n = lost + gained + both + neither
    if n <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (both + lost) / n, (both + gained) / n
    l1, u1 = wilson(both + lost, n, z)
    l2, u2 = wilson(both + gained, n, z)
    a, b, c, d = both, lost, gained, neither
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    if denom <= 0:
        phi = 0.0
    else:
        num = a * d - b * c
        num = max(num - n / 2, 0.0) if num > 0 else num   # Newcombe's continuity correction
        phi = num / math.sqrt(denom)
    drop = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return drop, max(-1.0, drop - delta), min(1.0, drop + eps)


def paired_samples_needed(lost: float, gained: float, both: float, neither: float, limit: float,
                          z: float = Z95) -> int | None:
    """Fewest samples at which the same paired outcome rates would put the drop's upper end <= ``limit``."""
    n = lost + gained + both + neither
    if n <= 0 or not (lost - gained) / n < limit:
        return None

    def decided(m: int) -> bool:
        f = m / n
        return paired_drop_interval(lost * f, gained * f, both * f, neither * f, z)[2] <= limit

    return _smallest_n(decided, max(1, int(n)))
