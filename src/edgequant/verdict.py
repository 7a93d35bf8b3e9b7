"""The host's judgement of measured variants: the accuracy budget and the recommendation rule.

One rule judges every device: devices return measurements, and only this module decides what is
within budget, what is faster beyond noise, and what edgequant recommends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .measure.intervals import (
    paired_drop_interval,
    paired_samples_needed,
    samples_needed,
    wilson,
)
from .variant import Variant


@dataclass(frozen=True)
class Check:
    """One proxy against its threshold; agreement-type proxies carry a 95% Wilson interval.

    ``decision``: ``pass`` when the whole interval clears the threshold, ``fail`` when none of it
    does, ``undecided`` when it straddles (the evaluation set is too small to tell); a proxy
    without counts (cosine, SQNR, a metric without per-sample counts) is judged on its value.
    """

    proxy: str
    label: str
    value: float
    threshold: float
    decision: str                       # pass | fail | undecided
    higher_is_better: bool = True
    ci95: tuple[float, float] | None = None
    trials: int | None = None
    unit: str | None = None
    samples_needed: int | None = None   # fewest samples at which this rate would pass (None: cannot)
    note: str = ""                      # where the threshold comes from, when derived

    def text(self) -> str:
        op = (">=" if self.higher_is_better else "<=") if self.decision != "fail" else (
            "<" if self.higher_is_better else ">")
        if self.ci95 is None:
            return f"{self.label} {self.value:.4g} {op} {self.threshold:.4g}" + (f" ({self.note})" if self.note else "")
        lo, hi = self.ci95
        ci = f"{self.label} {self.value:.4g} (95% CI {lo:.3f}-{hi:.3f}, n={self.trials} {self.unit or 'samples'})"
        why = f" ({self.note})" if self.note else ""
        if self.decision != "undecided":
            return f"{ci} {op} {self.threshold:g}{why}"
        need = (f"a decision needs >= {self.samples_needed} samples at this rate" if self.samples_needed
                else "more samples cannot pass it at this rate")
        return f"{ci} straddles {self.threshold:g}; {need}{why}"

    def to_dict(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "value": self.value, "threshold": self.threshold, "decision": self.decision,
                "higher_is_better": self.higher_is_better, "ci95": list(self.ci95) if self.ci95 else None,
                "trials": self.trials, "unit": self.unit, "samples_needed": self.samples_needed, "note": self.note,
                "text": self.text()}


@dataclass(frozen=True)
class Judgement:
    """A variant against the budget: ``within``, ``undecided`` or ``over``, and the checks behind it."""

    decision: str
    checks: tuple[Check, ...]

    @property
    def within(self) -> bool:
        return self.decision == "within"

    @property
    def why(self) -> str:
        want = {"within": "pass", "undecided": "undecided", "over": "fail"}[self.decision]
        return "; ".join(c.text() for c in self.checks if c.decision == want)

    @property
    def samples_needed(self) -> int | None:
        """Fewest samples at which every undecided check would pass at its rate (None: cannot)."""
        needs = [c.samples_needed for c in self.checks if c.decision == "undecided"]
        return None if not needs or None in needs else max(needs)

    def verdict(self) -> str:
        """Plain words: ``over budget: ...``, ``undecided: evaluation set too small: ...`` or the passes."""
        prefix = {"within": "", "undecided": "undecided: evaluation set too small: ", "over": "over budget: "}
        return prefix[self.decision] + self.why

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "samples_needed": self.samples_needed,
                "checks": [c.to_dict() for c in self.checks]}


def _agreement_check(proxy: str, label: str, value: float, threshold: float, counts: Mapping | None) -> Check:
    """Pass only when the Wilson interval's lower end clears ``threshold`` (counts present)."""
    if not counts or not counts.get("trials"):
        return Check(proxy, label, value, threshold, "pass" if value >= threshold else "fail")
    trials = int(counts["trials"])
    lo, hi = wilson(float(counts["successes"]), trials)
    decision = "pass" if lo >= threshold else ("fail" if hi < threshold else "undecided")
    need = samples_needed(value, threshold, start=trials) if decision == "undecided" else None
    return Check(proxy, label, value, threshold, decision, True, (lo, hi), trials, counts.get("unit"), need)


def _near_ties(fidelity: Mapping) -> str:
    """Why nearest neighbours swap: FP32 near-ties that the candidate's similarity shift can flip."""
    shift, thin = fidelity.get("similarity_shift"), fidelity.get("nn_thin_margins")
    if shift is None or thin is None:
        return ""
    return (f"pairwise similarities move by a median {shift:.2g}, and {thin:.0%} of the samples have their two "
            "nearest FP32 neighbours closer than that: near-ties any such shift can swap")


def _drop_check(accuracy: Mapping, limit: float) -> Check:
    """A task metric's drop; a paired 95% interval when the metric reports per-sample outcomes."""
    label = f"{accuracy['metric']} drop"
    drop = float(accuracy["drop"])
    paired = (accuracy.get("details") or {}).get("paired")
    if not paired or not accuracy.get("higher_is_better", True):   # paired counts describe a proportion
        return Check("task_metric_drop", label, drop, limit, "pass" if drop <= limit + 1e-12 else "fail", False)
    counts = [float(paired[k]) for k in ("lost", "gained", "both", "neither")]
    _, lo, hi = paired_drop_interval(*counts)
    decision = "pass" if hi <= limit + 1e-12 else ("fail" if lo > limit else "undecided")
    need = paired_samples_needed(*counts, limit) if decision == "undecided" else None
    return Check("task_metric_drop", label, drop, limit, decision, False, (lo, hi), int(sum(counts)), "samples", need)


#: Output SQNR (dB) from which a variant computes FP32's function: float32 rounding through a
#: network stays near 120-150 dB, while 8-bit quantization reaches ~40 dB and 16-bit ~90 dB.
EXACT_SQNR_DB = 100.0


@dataclass(frozen=True)
class Budget:
    """How much accuracy an INT8 variant may lose.

    With a task metric: ``max_drop`` as a fraction of the FP32 value, or ``max_abs_drop`` in the
    metric's units. Without one (no labels), each output by its role (``measure.roles``):
    classifier/sequence top-1 (per-position) agreement >= ``min_agreement`` (unset: 1 - ``max_drop``,
    so a looser task budget loosens the label-free one too); embedding nearest-neighbour agreement
    >= ``min_nn_agreement`` (default: the same as top-1) and mean
    per-sample cosine >= ``min_cosine``; detection decision agreement >= ``min_detection_agreement``
    and box error <= ``max_box_error`` (output units) or, unset, <= ``max_box_rel_error`` of the
    mean |FP32 box coordinate|; dense outputs cosine >= ``min_cosine``. Agreements and paired
    task accuracies pass only when their 95% Wilson interval clears the threshold.
    """

    max_drop: float = 0.01
    max_abs_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float = 0.99
    min_nn_agreement: float | None = None
    min_detection_agreement: float = 0.95     # counted over the few anchors that fire: 0.99 allows no flip
    max_box_error: float | None = None
    max_box_rel_error: float = 0.05

    @property
    def agreement(self) -> float:
        """Top-1 agreement floor: a relative drop of ``max_drop`` allows that share of decisions to flip."""
        return self.min_agreement if self.min_agreement is not None else 1.0 - self.max_drop

    @property
    def nn_agreement(self) -> float:
        return self.min_nn_agreement if self.min_nn_agreement is not None else self.agreement

    def describe(self) -> str:
        task = (f"task metric drop <= {self.max_abs_drop:g} (absolute)" if self.max_abs_drop is not None
                else f"task metric drop <= {self.max_drop:.1%} of FP32")
        box = (f"box error <= {self.max_box_error:g}" if self.max_box_error is not None
               else f"box error <= {self.max_box_rel_error:.0%} of the mean |FP32 box coordinate|")
        return (f"{task}; without a task metric, by output role: classifier/sequence top-1 agreement >= "
                f"{self.agreement:g}, embedding nearest-neighbour agreement >= {self.nn_agreement:g} and "
                f"mean per-sample cosine >= {self.min_cosine:g}, detection decision agreement >= "
                f"{self.min_detection_agreement:g} and {box}, otherwise output cosine >= {self.min_cosine:g}; "
                "agreements must clear their threshold with the whole 95% Wilson interval (else undecided)")

    def judge(self, fp32_accuracy: Mapping | None, accuracy: Mapping | None, fidelity: Mapping) -> Judgement:
        """One variant against the budget: within, undecided (interval straddles) or over.

        Outputs equal to FP32's up to float rounding on every evaluation sample (an exact rewrite
        such as ``fp32-opt``) are within budget whatever the sample count: every prediction is
        FP32's, so there is no rate to estimate."""
        sqnr = fidelity.get("sqnr_db")
        if sqnr is not None and sqnr >= EXACT_SQNR_DB:
            return Judgement("within", (Check("sqnr_db", "SQNR vs FP32", sqnr, EXACT_SQNR_DB, "pass",
                                              note="dB: outputs equal FP32's up to float rounding"),))
        checks: list[Check] = []
        if accuracy is not None and fp32_accuracy is not None:
            ref = fp32_accuracy["value"]
            if self.max_abs_drop is not None:
                limit = self.max_abs_drop
            elif abs(ref) > 0:
                limit = self.max_drop * abs(ref)
            else:
                limit = None  # a relative budget of a zero reference means nothing: use fidelity
            if limit is not None:
                checks.append(_drop_check(accuracy, limit))
        if not checks:
            checks = self._label_free(fidelity)
        decisions = {c.decision for c in checks}
        decision = "over" if "fail" in decisions else ("undecided" if "undecided" in decisions else "within")
        return Judgement(decision, tuple(checks))

    def _label_free(self, fidelity: Mapping) -> list[Check]:
        """Each output's role proxy (measure.roles); every proxy present must pass."""
        counts = fidelity.get("intervals") or {}
        checks: list[Check] = []
        for key, label, threshold in (("top1_agreement", "top-1 agreement with FP32", self.agreement),
                                      ("nn_agreement", "nearest-neighbour agreement", self.nn_agreement),
                                      ("detection_agreement", "detection decision agreement",
                                       self.min_detection_agreement)):
            if fidelity.get(key) is not None:
                check = _agreement_check(key, label, fidelity[key], threshold, counts.get(key))
                if key == "nn_agreement" and check.decision != "pass":
                    check = replace(check, note=_near_ties(fidelity))
                checks.append(check)
        mean_cos = fidelity.get("mean_sample_cosine")
        if mean_cos is not None:
            checks.append(Check("mean_sample_cosine", "mean per-sample cosine", mean_cos, self.min_cosine,
                                "pass" if mean_cos >= self.min_cosine else "fail"))
        box, scale = fidelity.get("box_error"), fidelity.get("box_scale")
        if box is not None:
            limit = self.max_box_error if self.max_box_error is not None else self.max_box_rel_error * (scale or 0.0)
            note = ("" if self.max_box_error is not None
                    else f"{self.max_box_rel_error:.0%} of the mean |FP32 box value| {scale:.4g}")
            checks.append(Check("box_error", "box error", box, limit, "pass" if box <= limit else "fail", False,
                                note=note))
        if not checks:
            cos = fidelity["cosine"]
            checks.append(Check("cosine", "output cosine", cos, self.min_cosine,
                                "pass" if cos >= self.min_cosine else "fail"))
        return checks

    def check(self, fp32_accuracy: Mapping | None, accuracy: Mapping | None,
              fidelity: Mapping) -> tuple[bool, str]:
        """(within budget, why) for one variant; undecided counts as not within budget."""
        j = self.judge(fp32_accuracy, accuracy, fidelity)
        return j.within, j.why


def _slow_reason(v: Variant) -> str:
    from .measure.profile import explain_profile

    evidence = f" ({explain_profile(v.profile_us_by_op)})" if v.profile_us_by_op else ""
    if v.mode == "fp32-opt":
        return "the rewritten FP32 graph is not faster on this CPU" + evidence
    return _coverage_reason(v) + evidence


def _coverage_reason(v: Variant) -> str:
    cov = v.coverage
    if cov and cov.compute_ops and cov.quantized_compute_ops < cov.compute_ops:
        return (f"only {cov.quantized_compute_ops}/{cov.compute_ops} compute ops run as INT8 kernels "
                "after ORT optimization; the rest pay Q/DQ overhead in float")
    if cov and cov.compute_ops == 0:
        return "no compute op runs as an INT8 kernel"
    return "INT8 kernels plus quantize/dequantize overhead do not beat FP32 on this CPU"


def _no_int8_reason(v: Variant) -> str:
    """Why a variant has no INT8 kernel: a control-flow body its quantizer left float (the
    quantizer's own note), else the recipe had no op to quantize."""
    from .measure.coverage import BODY_FLOAT_NOTE

    body = next((n for n in v.notes if n.startswith(BODY_FLOAT_NOTE)), None)
    if body:
        return f"the compute is in control-flow bodies: {body[len(BODY_FLOAT_NOTE):]}"
    return f"recipe {v.mode} has no op to quantize here"


def _placement_defect(v: Variant) -> str | None:
    """An operator the accelerator left to the CPU: the model cannot ship to it as built."""
    p = v.placement
    if p and p.get("compute_on_cpu"):
        nodes = ", ".join((p.get("operators_on_cpu") or p.get("cpu_fallback_nodes", []))[:4])
        return f"{p['compute_on_cpu']} operator(s) fall back to the CPU ({nodes})"
    return None


def _quality_key(v: Variant) -> tuple[float, float]:
    """Higher is better: smaller task-metric drop first, then output cosine."""
    drop = v.accuracy.get("drop") if v.accuracy else None
    return (-(drop if drop is not None else 0.0), v.fidelity.cosine)


def recommend(variants: list[Variant], budget: Budget, *, min_speedup: float = 1.05, judge_speed: bool = True,
              device: str = "cpu") -> tuple[str, str]:
    """Fastest INT8 variant that is within budget and faster than FP32 beyond noise (95% CI above
    1) by at least ``min_speedup`` (``Speedup.accepts``), else fp32. A variant with no INT8 compute
    op is not INT8, and one whose compute falls back to the CPU of an accelerator is a defect.

    ``judge_speed=False`` (a simulated accelerator, whose time is not latency): the most accurate
    fully-INT8 variant within budget that runs entirely on the accelerator; speed is the NPU's by design.
    Annotates each variant with ``within_budget``, its ``budget`` judgement and a plain-words
    ``verdict``. An *undecided* variant (an agreement interval straddles its threshold) is never
    within budget: it is not recommended, and its verdict says how many samples would decide it.
    """
    fp32 = variants[0]
    fp32.within_budget, fp32.verdict = True, "reference"
    eligible = []
    int8_within: list[Variant] = []     # INT8 within budget, whatever its speed
    for v in variants[1:]:
        judged = budget.judge(fp32.accuracy, v.accuracy, v.fidelity.to_dict())
        ok, why = judged.within, judged.why
        v.within_budget, v.budget = ok, judged.to_dict()   # undecided is not within budget
        defect = _placement_defect(v)
        if not judge_speed and v.mode not in ("dynamic", "static"):
            v.verdict = (f"an FP32 graph ({v.mode}): its only gain is speed, which {device} cannot measure "
                         "(emulated)")
        elif v.runs_no_int8:
            v.verdict = (f"nothing quantized: none of the {v.coverage.compute_ops} compute ops runs as an INT8 kernel "
                         f"({_no_int8_reason(v)})")
        elif not ok:
            part = v.fidelity.evaluated_subset
            v.verdict = judged.verdict() + (f" (on {part['samples']} of {part['of']} evaluation samples, every "
                                            f"{part['stride']}th: enough to rule it out)" if part else "")
        elif defect:
            v.verdict = f"not deployable on {device}: {defect}"
        elif not judge_speed and v.coverage is not None and v.coverage.quantized_compute_ops < v.coverage.compute_ops:
            v.verdict = (f"partly float on {device}: {v.coverage.quantized_compute_ops}/{v.coverage.compute_ops} "
                         "compute ops INT8; where speed cannot be measured (an NPU needs every layer INT8 anyway) "
                         "only a fully-INT8 build is recommended")
        elif not judge_speed:
            v.verdict = f"eligible: within budget on {device} outputs ({why}); latency not measured ({device} is emulated)"
            eligible.append(v)
        elif not _set_speed_verdict(v, min_speedup, eligible, why) and v.mode in ("dynamic", "static"):
            int8_within.append(v)
    if not eligible:
        # only those the budget alone held back (not e.g. a variant with nothing quantized)
        undecided = [v for v in variants[1:] if v.verdict and v.verdict.startswith("undecided")]
        why_undecided = ""
        if undecided:
            needs = [v.budget["samples_needed"] for v in undecided if v.budget["samples_needed"]]
            why_undecided = (f"; undecided, evaluation set too small: {', '.join(v.name for v in undecided)}"
                             + (f" (the closest needs >= {min(needs)} samples)" if needs else ""))
        if not judge_speed:
            return "fp32", (f"no INT8 variant is within the accuracy budget and runs entirely on {device}"
                            + why_undecided)
        return "fp32", ("no INT8 variant is both within the accuracy budget and faster than FP32 beyond noise "
                        f"by >= {min_speedup:g}x" + why_undecided)
    best = max(eligible, key=_quality_key) if not judge_speed else max(eligible, key=lambda v: v.speedup)
    reason = best.verdict.removeprefix("eligible: ")
    if judge_speed and best.mode not in ("dynamic", "static"):
        reason += _int8_shortfall(best, [v for v in eligible if v.mode in ("dynamic", "static")] + int8_within)
    return best.name, reason


def _set_speed_verdict(v: Variant, min_speedup: float, eligible: list[Variant], why: str) -> bool:
    """The verdict of a variant within budget, by its speed; True (and into ``eligible``) when it
    is faster than FP32 beyond noise by at least ``min_speedup``."""
    sp = v.speed
    if sp.slower_than_noise:
        v.verdict = f"slower than FP32 ({sp.ratio:.2f}x): {_slow_reason(v)}"
    elif not sp.faster_than_noise:
        v.verdict = f"not faster than FP32 beyond noise ({sp.ratio:.2f}x, 95% CI {sp.ci_low:.2f}-{sp.ci_high:.2f})"
    elif not sp.accepts(min_speedup):
        v.verdict = f"only {sp.ratio:.2f}x faster (< {min_speedup:g}x): not worth INT8's accuracy risk"
    else:
        v.verdict = f"eligible: {sp.ratio:.2f}x faster (95% CI {sp.ci_low:.2f}-{sp.ci_high:.2f}); {why}"
        eligible.append(v)
        return True
    return False


def _int8_shortfall(best: Variant, int8: list[Variant]) -> str:
    """An FP32 graph (fp32-opt) won: by how much each INT8 variant within budget falls short of it,
    and where its kernel time goes instead (per-op profile, op class by op class). Annotates their
    verdicts; returns the sentence for the recommendation about the fastest of them."""
    from .measure.profile import compare_profiles

    def shortfall(v: Variant) -> str:
        why = (f": {compare_profiles(v.profile_us_by_op, best.profile_us_by_op)}"
               if v.profile_us_by_op and best.profile_us_by_op else "")
        return f"{best.name} is faster: INT8 falls short of it by {1 - v.speedup / best.speedup:.0%}{why}"

    for v in int8:
        v.verdict = f"within budget and {v.speedup:.2f}x FP32, but {shortfall(v)}"
    if not int8:
        return ""
    top = max(int8, key=lambda v: v.speedup)
    return f"; the fastest INT8 within budget, {top.name}, {shortfall(top)}"
