"""The search: start from the target's defaults, measure, then act on the diagnosis.

1. ``defaults``: dynamic and static with the target's rule. Static within budget: done.
2. Static over budget: per-node sensitivity on the calibration data, then ``calibration``
   (percentile/entropy, U8U8 or reduce_range, per-channel) and ``ranges`` (16-bit or float for
   outlier-dominated tensors) variants.
3. Still over budget: ``fallback`` the most sensitive nodes of the best static recipe to float
   (16-bit on QNN) in growing groups (1, 2, 4, ...) until the budget holds, then bisect back so
   as few nodes as possible leave INT8.
The clock (``--time-budget``) and a candidate cap are checked before every trial batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sensitivity import SensitivityReport
from .recipes import (
    Recipe,
    calibration_recipes,
    default_recipes,
    fallback_order,
    fallback_recipe,
    keeps_int8,
    range_recipes,
)
from .trials import Trial, TrialRunner


@dataclass
class SearchState:
    """Everything the search found, in the order it was tried."""

    trials: list[Trial] = field(default_factory=list)
    sensitivity: SensitivityReport | None = None
    stopped: str | None = None          # why the search ended early (time budget, candidate cap)
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Trial | None:
        return next((t for t in self.trials if t.name == name), None)


def quality_score(t: Trial) -> float:
    """Higher is better, comparable across trials of one search (same data, same reference)."""
    if t.accuracy is not None:
        return -float(t.accuracy["drop"])
    agree = (t.fidelity or {}).get("top1_agreement")
    return float(agree) if agree is not None else float((t.fidelity or {}).get("cosine", -1.0))


@dataclass
class Search:
    runner: TrialRunner
    target: str
    analyze: Callable[[Trial], SensitivityReport | None]   # sensitivity of the static default
    deadline: float | None = None
    max_candidates: int = 20
    state: SearchState = field(default_factory=SearchState)

    def _budget_left(self, n: int = 1) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.state.stopped = f"time budget reached after {len(self.state.trials)} candidates"
            return False
        if len(self.state.trials) + n > self.max_candidates:
            self.state.stopped = f"candidate limit ({self.max_candidates}) reached"
            return False
        return True

    def _try(self, recipes: list[Recipe]) -> list[Trial]:
        names = {t.name for t in self.state.trials}
        fresh = [r for r in recipes if r.name not in names]
        if not fresh or not self._budget_left(1):
            return []
        room = self.max_candidates - len(self.state.trials)
        trials = self.runner.run(fresh[:room])
        self.state.trials.extend(trials)
        return trials

    def run(self) -> SearchState:
        self._try(default_recipes())
        static = self.state.get("static")
        if static is None or static.error:
            self.state.notes.append("static quantization failed; only dynamic was searched")
            return self.state
        if static.within_budget:
            return self.state
        if not self._budget_left():
            return self.state
        self.state.sensitivity = self.analyze(static)
        stage2 = self._try(calibration_recipes(self.target) + range_recipes(self.state.sensitivity))
        if any(t.within_budget for t in stage2):
            return self.state
        if self.state.sensitivity is not None and self.state.sensitivity.nodes:
            self._fallback(self._best_static_base(), self.state.sensitivity)
        return self.state

    def _best_static_base(self) -> Recipe:
        family = [t for t in self.state.trials if t.ok and t.recipe.mode == "static"
                  and t.recipe.stage in ("defaults", "calibration")]
        best = max(family, key=quality_score)  # max keeps the first on ties: the target default
        return best.recipe

    def _fallback(self, base: Recipe, sens: SensitivityReport) -> None:
        """Grow the group of fallen-back nodes 1, 2, 4, ... until within budget, then bisect."""
        order = fallback_order(sens)
        sixteen = self.target == "qnn"
        by_change: dict[tuple, Trial] = {}

        def attempt(k: int) -> Trial | None:
            recipe = fallback_recipe(base, order[:k], sixteen_bit=sixteen)
            if not keeps_int8(recipe, sens):
                return None
            change = (recipe.exclude, recipe.int16_tensors)
            if change not in by_change:  # overlapping regions: a bigger group may change nothing
                got = self._try([recipe])
                if not got:
                    return None
                by_change[change] = got[0]
            return by_change[change]

        low, k = 0, 1
        while True:
            t = attempt(k)
            if t is None:
                return  # no INT8 compute left, or out of time/candidates
            if t.within_budget:
                self._bisect(low, k, attempt)
                return
            if k == len(order):
                return
            low, k = k, min(2 * k, len(order))

    def _bisect(self, low: int, high: int, attempt: Callable[[int], Trial | None]) -> None:
        """Fewest nodes out of INT8: shrink between the last failing and the first passing size."""
        while high - low > 1:
            mid = (low + high) // 2
            t = attempt(mid)
            if t is None:
                return
            if t.within_budget:
                high = mid
            else:
                low = mid
