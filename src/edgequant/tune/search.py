"""The search: start from the target's defaults, measure, then act on the diagnosis.

1. ``defaults``: dynamic and static with the target's rule (on targets without a float path,
   qnn: static A8W8 and A16W8). Static within budget: done.
2. ``placement``: on an accelerator, operators it left to the CPU are a defect, never accepted;
   the defaults are repaired (uint8 weights, 16-bit activations around those operators) and the
   repaired recipe is the base of every later stage.
3. Static over budget: per-node sensitivity on the calibration data, then ``calibration``
   (percentile/entropy, U8U8 or reduce_range, per-channel) and ``ranges`` (16-bit or float for
   outlier-dominated tensors) variants, then ``algorithms`` (MSE ranges, cross-layer
   equalization, bias correction, SmoothQuant: every layer still INT8), then ``learned rounding``
   (AdaRound, with and without bias correction) on the best static recipe so far, then ``qat``
   (quantization-aware training from that recipe's PTQ model, where torch is installed).
   Where a dynamic default came closer than static (transformers), SmoothQuant is tried on it
   (an added Mul where the producer cannot absorb the division), then the MatMul/Gemm nodes whose
   inputs dynamic INT8 quantizes worst (``sensitivity_dynamic``) fall back to float (same growth
   and bisection as step 4), before the static stages.
4. Still over budget: ``fallback`` the most sensitive nodes of the best static recipe to float
   (16-bit where the target has no float path or float fallback is off) in growing groups
   (1, 2, 4, ...) until the budget holds, then bisect back so as few nodes as possible leave INT8.
   Without float fallback on a CPU (``--no-float-fallback``: 16-bit is float compute there) this
   stage is skipped and the report says fully INT8 could not be done.
The clock (``--time-budget``) and a candidate cap are checked before every trial batch. Under a
time budget the slow stages (learned rounding, QAT) leave time for the fallback stage after them:
a few trials at the pace the search has run so far, so that a slow stage that does not finish
still leaves a candidate within budget where the fallback finds one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..sensitivity import SensitivityReport
from .recipes import (
    Recipe,
    algorithm_recipes,
    calibration_recipes,
    default_recipes,
    dynamic_algorithm_recipes,
    dynamic_fallback_recipe,
    fallback_order,
    fallback_recipe,
    keeps_int8,
    placement_recipes,
    range_recipes,
    qat_recipe,
    rounding_recipes,
)
from .trials import Trial, TrialRunner


FALLBACK_RESERVE_TRIALS = 4      # trials of the fallback stage a slow stage leaves time for (1, 2, 4, bisect)
SLOW_STAGES = ("learned rounding", "qat")


def slow_stage_share(left_s: float, pace_s: float | None, fallback_follows: bool) -> tuple[float, float]:
    """(seconds a slow stage may use, seconds kept for the fallback stage) out of ``left_s`` of the
    time budget: ``FALLBACK_RESERVE_TRIALS`` trials at ``pace_s`` (seconds per trial batch so far),
    never more than half of what is left, and nothing when no fallback stage follows."""
    if not fallback_follows or pace_s is None or left_s <= 0:
        return max(0.0, left_s), 0.0
    reserve = min(FALLBACK_RESERVE_TRIALS * pace_s, left_s / 2)
    return left_s - reserve, reserve


@dataclass
class SearchState:
    """Everything the search found, in the order it was tried."""

    trials: list[Trial] = field(default_factory=list)
    sensitivity: SensitivityReport | None = None
    stopped: str | None = None          # why the search ended early (time budget, candidate cap)
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Trial | None:
        return next((t for t in self.trials if t.name == name), None)


def _settles(trials: list[Trial]) -> bool:
    """Whether a stage ends the search: a candidate within budget that still runs INT8 compute (one
    whose every layer stayed float, e.g. a 16-bit branch refused at opset 13, is FP32 at a cost)."""
    return any(t.within_budget and (t.coverage or {}).get("quantized_compute_ops", 1) > 0 for t in trials)


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
    # weight MatMul/Gemm nodes by input SQNR under dynamic quantization, lowest first (sensitivity_dynamic)
    rank_dynamic: Callable[[], list[tuple[str, float]]] | None = None
    deadline: float | None = None
    max_candidates: int = 20
    float_fallback: bool = True        # may layers be kept float? (False: fully INT8 or 16-bit only)
    qat_minutes: float = 0.0           # QAT step's training time (needs runner.qat_trainer)
    state: SearchState = field(default_factory=SearchState)
    _batch_pace: list[float] = field(default_factory=list)   # seconds per round of trials, per batch

    def _budget_left(self, n: int = 1) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.state.stopped = f"time budget reached after {len(self.state.trials)} candidates"
            return False
        if len(self.state.trials) + n > self.max_candidates:
            self.state.stopped = f"candidate limit ({self.max_candidates}) reached"
            return False
        return True

    def _try(self, recipes: list[Recipe], *, deadline: float | None = None) -> list[Trial]:
        names = {t.name for t in self.state.trials}
        fresh = [r for r in recipes if r.name not in names]
        if not fresh or not self._budget_left(1):
            return []
        room = self.max_candidates - len(self.state.trials)
        if len(fresh) > room:
            self.state.stopped = f"candidate limit ({self.max_candidates}) reached"
        started = time.monotonic()
        trials = self.runner.run(fresh[:room], deadline=deadline)
        if not any(t.recipe.stage in SLOW_STAGES for t in trials):
            rounds = math.ceil(len(trials) / self.runner.parallel)   # trials quantized side by side
            self._batch_pace.append((time.monotonic() - started) / max(1, rounds))
        self.state.trials.extend(trials)
        return trials

    def _fallback_follows(self) -> bool:
        sens = self.state.sensitivity
        return bool(sens is not None and sens.nodes and (self.float_fallback or self.target == "qnn"))

    def _slow_stage_window(self, stage: str, min_s: float = 0.0) -> tuple[bool, float | None]:
        """Whether a slow stage runs, and when its quantization must end under the time budget
        (None: no budget), leaving the fallback stage its share; the choice goes in the notes. A
        stage whose share is shorter than ``min_s`` or one ordinary trial batch is skipped."""
        if self.deadline is None:
            return True, None
        left = self.deadline - time.monotonic()
        pace = statistics.median(self._batch_pace) if self._batch_pace else None
        share, reserve = slow_stage_share(left, pace, self._fallback_follows())
        if reserve <= 0:
            return True, None
        kept = (f"{reserve:.0f} s kept for the float-fallback stage ({FALLBACK_RESERVE_TRIALS} trials at "
                f"{pace:.1f} s each so far)")
        if share < max(pace, min_s):
            self.state.notes.append(f"{stage} skipped: {left:.0f} s of the time budget left, {kept}")
            return False, None
        self.state.notes.append(f"{stage}: {share:.0f} s of the time budget's {left:.0f} s left; {kept}")
        return True, time.monotonic() + share

    def run(self) -> SearchState:
        try:
            return self._search()
        finally:
            self.runner.settle()     # nothing left quantizing behind the report

    def _search(self) -> SearchState:
        defaults = self._try(default_recipes(self.target, self.runner.fp32_model()))
        static = self.state.get("static")
        if static is None or static.error:
            self.state.notes.append("static quantization failed; only dynamic was searched")
            return self.state
        base = self._repair_placement([t for t in defaults if t.ok and t.recipe.mode == "static"])
        if _settles([t for t in self.state.trials if t.recipe.mode == "static"]) or not self._budget_left():
            return self.state
        # the calibration variants need no sensitivity: workers quantize them while it runs here
        room = self.max_candidates - len(self.state.trials)
        self.runner.quantize_ahead(calibration_recipes(self.target, base)[:room])
        self.state.sensitivity = self.analyze(static)
        if self._dynamic_fallback():
            return self.state
        stage2_recipes = calibration_recipes(self.target, base) + self._range_recipes(base)
        # the range recipes, known now, take the workers the calibration batch frees (where batches
        # can share them) instead of waiting for its slowest recipe
        self.runner.quantize_ahead(stage2_recipes[:room])
        stage2 = self._try(stage2_recipes)
        if _settles(stage2):
            return self.state
        # every layer still INT8, better algorithms, before anything leaves INT8
        stage3 = self._try(algorithm_recipes(base, self.runner.fp32_model()))
        if _settles(stage3):
            return self.state
        runs, until = self._slow_stage_window("learned rounding")
        stage4 = self._try(rounding_recipes(self._best_static_base()), deadline=until) if runs else []
        if _settles(stage4):   # slower: only when still needed
            return self.state
        if _settles(self._try(qat_recipe(self._best_static_base(), self._qat_minutes()))):
            return self.state
        if self.state.sensitivity is not None and self.state.sensitivity.nodes:
            if self.float_fallback or self.target == "qnn":
                self._fallback(self._best_static_base(), self.state.sensitivity)
            else:
                self.state.notes.append(
                    "float fallback is off (--no-float-fallback) and 16-bit activations are float compute on "
                    "this CPU: no fully INT8 candidate met the budget")
        return self.state

    def _qat_minutes(self) -> float:
        """Training time for the QAT step: ``qat_minutes``, less where the time budget is shorter
        (a minute kept for the final measurement); 0 (no QAT) without torch or under a minute."""
        if self.runner.qat_trainer is None or self.qat_minutes <= 0:
            return 0.0
        minutes = self.qat_minutes
        if self.deadline is not None:
            runs, until = self._slow_stage_window("QAT", min_s=120.0)   # a minute of training + one kept
            if not runs:
                return 0.0
            end = self.deadline if until is None else until
            minutes = min(minutes, (end - time.monotonic()) / 60.0 - 1.0)
        if minutes < 1.0:
            self.state.notes.append("QAT skipped: less than a minute of the time budget left")
            return 0.0
        return round(minutes, 1)

    def _repair_placement(self, trials: list[Trial]) -> Recipe:
        """Repair defaults whose operators the accelerator left to the CPU; the recipe to build on.

        The repairs of the first broken default are tried one at a time (cheapest first); the one
        that works is applied to the other broken defaults (e.g. A16W8) too."""
        clean = [t for t in trials if not t.operators_on_cpu]
        broken = [t for t in trials if t.operators_on_cpu]
        if broken and self._budget_left():
            first = broken[0]
            fix = None
            for recipe in placement_recipes(first.recipe, first.operators_on_cpu, self.runner.fp32_model()):
                got = self._try([recipe])
                if got and got[0].ok and not got[0].operators_on_cpu:
                    fix = got[0]
                    break
            if fix is None:
                self.state.notes.append(
                    f"{first.name}: the accelerator still leaves {', '.join(first.operators_on_cpu)} to the CPU "
                    "after the uint8-weight and 16-bit repairs: no recipe here runs it fully on the device")
            else:
                clean.append(fix)
                suffix = fix.name.removeprefix(first.name)
                more = [replace(t.recipe, name=t.name + suffix, stage="placement", why=fix.recipe.why,
                                uint8_weights=tuple(dict.fromkeys(t.recipe.uint8_weights + fix.recipe.uint8_weights)),
                                int16_tensors=tuple(dict.fromkeys(t.recipe.int16_tensors + fix.recipe.int16_tensors)),
                                float_reasons=fix.recipe.float_reasons) for t in broken[1:]]
                clean.extend(t for t in self._try(more) if t.ok and not t.operators_on_cpu)
        eight_bit = [t for t in clean if t.recipe.activation_type is None]  # the later stages vary 8-bit
        pick = eight_bit or clean or trials
        return pick[0].recipe if pick else Recipe("static", "static")

    def _range_recipes(self, base: Recipe) -> list[Recipe]:
        out = range_recipes(self.state.sensitivity, base)
        return out if self.float_fallback else [r for r in out if not r.exclude]

    def _best_static_base(self) -> Recipe:
        family = [t for t in self.state.trials if t.ok and t.recipe.mode == "static"
                  and t.recipe.stage in ("defaults", "placement", "calibration", "algorithms", "learned rounding")
                  and t.recipe.activation_type is None]
        deployable = [t for t in family if not t.operators_on_cpu] or family
        best = max(deployable, key=quality_score)  # max keeps the first on ties: the target default
        return best.recipe

    def _dynamic_fallback(self) -> bool:
        """Where a dynamic default came closer to the budget than static (transformers, whose static
        INT8 attention and LayerNorm inputs lose most), keep float the MatMul/Gemm nodes whose inputs
        dynamic quantization hurts most, before the static stages; True when that settled the search."""
        sens = self.state.sensitivity
        if not self.float_fallback or self.rank_dynamic is None or sens is None or not self._budget_left():
            return False
        dynamic = [t for t in self.state.trials if t.ok and t.recipe.mode == "dynamic" and t.recipe.stage == "defaults"
                   and t.recipe.fuse_transformer is not True   # fused graphs rename the nodes
                   and (t.coverage or {}).get("quantized_compute_ops", 0) > 0]
        static = [t for t in self.state.trials if t.ok and t.recipe.mode == "static"]
        if not dynamic:
            return False
        best = max(dynamic, key=quality_score)
        if static and quality_score(max(static, key=quality_score)) >= quality_score(best):
            return False
        ranked = self.rank_dynamic()
        if len(ranked) < 2:     # one node: leaving it float leaves nothing INT8
            return False
        self.state.notes.append(f"{best.name} came closest to the budget among the defaults: SmoothQuant on it "
                                "first (every layer still INT8), then the MatMul/Gemm nodes whose inputs dynamic INT8 "
                                "quantizes worst fall back to float, before the static stages")
        smoothed: list[Trial] = []
        for recipe in dynamic_algorithm_recipes(best.recipe, self.runner.fp32_model()):   # each builds on the last
            smoothed += self._try([recipe])
            if _settles(smoothed):
                return True
        best = max([best, *(t for t in smoothed if t.ok)], key=quality_score)   # the fallback builds on the better
        self._fallback(best.recipe, sens, order=ranked[:-1], make=dynamic_fallback_recipe)
        return _settles([t for t in self.state.trials if t.recipe.stage == "fallback"])

    def _fallback(self, base: Recipe, sens: SensitivityReport, *, order: list | None = None,
                  make: Callable[[Recipe, list], Recipe] | None = None) -> None:
        """Grow the group of fallen-back nodes 1, 2, 4, ... until within budget, then bisect.

        With ``n`` trials quantized side by side (``runner.parallel``), each batch tries the next
        ``n`` sizes (1 and 2, then 4 and 8) and the bisection splits its interval at ``n`` points:
        a sequential search would leave all workers but one idle in this stage. ``order`` and
        ``make`` (default: the static ranking and :func:`fallback_recipe`) serve the dynamic stage."""
        order = order if order is not None else fallback_order(sens)
        sixteen = self.target == "qnn"
        allow_float = self.float_fallback
        by_change: dict[tuple, Trial] = {}
        width = max(1, self.runner.parallel)

        def recipe_for(k: int) -> Recipe:
            if make is not None:
                return make(base, order[:k])
            return fallback_recipe(base, order[:k], sixteen_bit=sixteen, allow_float=allow_float)

        # the biggest group that still leaves INT8 compute: the doubling stops there, not past it
        largest = len(order)
        while largest > 0 and not keeps_int8(recipe_for(largest), sens):
            largest -= 1
        if largest == 0:
            return

        def attempt(sizes: list[int]) -> dict[int, Trial] | None:
            """Trials for each group size, smallest first. None: nothing could be tried (out of
            time or candidates)."""
            recipes: dict[int, tuple[tuple, Recipe]] = {}
            for k in sizes:
                recipe = recipe_for(k)
                recipes[k] = ((recipe.exclude, recipe.int16_tensors), recipe)
            fresh = {change: r for change, r in recipes.values() if change not in by_change}
            if fresh:   # overlapping regions: a bigger group may change nothing
                got = self._try(list(fresh.values()))
                by_change.update({change: t for change, t in zip(fresh, got)})
            out = {k: by_change[change] for k, (change, _r) in recipes.items() if change in by_change}
            return out or None

        low, k = 0, 1
        while True:
            sizes = [k]
            while len(sizes) < width and sizes[-1] < largest:
                sizes.append(min(2 * sizes[-1], largest))
            tried = attempt(sizes)
            if tried is None:
                return  # out of time or candidates
            passing = [s for s, t in sorted(tried.items()) if t.within_budget]
            if passing:
                high = passing[0]
                low = max([low, *(s for s in tried if s < high)])
                self._bisect(low, high, attempt, width)
                return
            last = max(tried)
            if last == largest or last < sizes[-1]:   # nothing bigger keeps INT8 compute, or no room left
                return
            low, k = last, min(2 * last, largest)

    def _bisect(self, low: int, high: int, attempt: Callable[[list[int]], dict[int, Trial] | None],
                width: int = 1) -> None:
        """Fewest nodes out of INT8: shrink between the last failing and the first passing size,
        trying ``width`` evenly spaced sizes of the interval per batch."""
        while high - low > 1:
            gap = high - low
            sizes = sorted({low + (gap * i) // (width + 1) for i in range(1, width + 1)} - {low, high})
            tried = attempt(sizes)
            if tried is None:
                return
            passing = [s for s, t in sorted(tried.items()) if t.within_budget]
            if passing:
                high = passing[0]
            failing = [s for s, t in tried.items() if not t.within_budget and s < high]
            if failing:
                low = max(low, *failing)
            if not passing and not failing:
                return
