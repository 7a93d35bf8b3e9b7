"""The host's judgement of measured variants: the accuracy budget and the recommendation rule.

One rule judges every device: devices return measurements, and only this module decides what is
within budget, what is faster beyond noise, and what edgequant recommends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .variant import Variant


@dataclass(frozen=True)
class Budget:
    """How much accuracy an INT8 variant may lose.

    With a task metric: ``max_abs_drop`` (in the metric's units) when set, else ``max_drop`` as a
    fraction of the FP32 value. Without one (no labels): top-1 agreement with FP32 >= ``min_agreement``
    for classifier-like outputs, else output cosine >= ``min_cosine``.
    """

    max_drop: float = 0.01
    max_abs_drop: float | None = None
    min_agreement: float = 0.99
    min_cosine: float = 0.99

    def describe(self) -> str:
        task = (f"task metric drop <= {self.max_abs_drop:g} (absolute)" if self.max_abs_drop is not None
                else f"task metric drop <= {self.max_drop:.1%} of FP32")
        return (f"{task}; without a task metric, by output role: classifier/sequence top-1 agreement >= "
                f"{self.min_agreement:g}, embedding nearest-neighbour agreement >= {self.min_agreement:g} and "
                f"mean per-sample cosine >= {self.min_cosine:g}, otherwise output cosine >= {self.min_cosine:g}")

    def check(self, fp32_accuracy: Mapping | None, accuracy: Mapping | None,
              fidelity: Mapping) -> tuple[bool, str]:
        """(within budget, why) for one variant."""
        if accuracy is not None and fp32_accuracy is not None:
            drop, ref = accuracy["drop"], fp32_accuracy["value"]
            if self.max_abs_drop is not None:
                limit = self.max_abs_drop
            elif abs(ref) > 0:
                limit = self.max_drop * abs(ref)
            else:
                limit = None  # a relative budget of a zero reference means nothing: use fidelity
            if limit is not None:
                ok = drop <= limit + 1e-12
                return ok, f"{accuracy['metric']} drop {drop:.4g} {'<=' if ok else '>'} budget {limit:.4g}"
        # label-free: each output by its role's proxy (measure.roles); every proxy present must pass
        checks: list[tuple[bool, str]] = []
        agree = fidelity.get("top1_agreement")
        if agree is not None:
            ok = agree >= self.min_agreement
            checks.append((ok, f"top-1 agreement with FP32 {agree:.3f} {'>=' if ok else '<'} {self.min_agreement:g}"))
        nn = fidelity.get("nn_agreement")
        if nn is not None:
            ok = nn >= self.min_agreement
            checks.append((ok, f"nearest-neighbour agreement {nn:.3f} {'>=' if ok else '<'} {self.min_agreement:g}"))
        mean_cos = fidelity.get("mean_sample_cosine")
        if mean_cos is not None:
            ok = mean_cos >= self.min_cosine
            checks.append((ok, f"mean per-sample cosine {mean_cos:.4f} {'>=' if ok else '<'} {self.min_cosine:g}"))
        if not checks:
            cos = fidelity["cosine"]
            ok = cos >= self.min_cosine
            checks.append((ok, f"output cosine {cos:.4f} {'>=' if ok else '<'} {self.min_cosine:g}"))
        failed = [why for ok, why in checks if not ok]
        return not failed, "; ".join(failed or [why for _, why in checks])


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
    Annotates each variant with ``within_budget`` and a plain-words ``verdict``.
    """
    fp32 = variants[0]
    fp32.within_budget, fp32.verdict = True, "reference"
    eligible = []
    for v in variants[1:]:
        ok, why = budget.check(fp32.accuracy, v.accuracy, v.fidelity.to_dict())
        v.within_budget = ok
        sp = v.speed
        lo, hi = sp.ci_low, sp.ci_high
        defect = _placement_defect(v)
        if not judge_speed and v.mode not in ("dynamic", "static"):
            v.verdict = (f"an FP32 graph ({v.mode}): its only gain is speed, which {device} cannot measure "
                         "(emulated)")
        elif v.runs_no_int8:
            v.verdict = (f"nothing quantized: none of the {v.coverage.compute_ops} compute ops runs as an INT8 kernel "
                         f"(recipe {v.mode} has no op to quantize here)")
        elif not ok:
            v.verdict = f"over budget: {why}"
        elif defect:
            v.verdict = f"not deployable on {device}: {defect}"
        elif not judge_speed and v.coverage is not None and v.coverage.quantized_compute_ops < v.coverage.compute_ops:
            v.verdict = (f"partly float on {device}: {v.coverage.quantized_compute_ops}/{v.coverage.compute_ops} "
                         "compute ops INT8; where speed cannot be measured (an NPU needs every layer INT8 anyway) "
                         "only a fully-INT8 build is recommended")
        elif not judge_speed:
            v.verdict = f"eligible: within budget on {device} outputs ({why}); latency not measured ({device} is emulated)"
            eligible.append(v)
        elif sp.slower_than_noise:
            v.verdict = f"slower than FP32 ({sp.ratio:.2f}x): {_slow_reason(v)}"
        elif not sp.faster_than_noise:
            v.verdict = f"not faster than FP32 beyond noise ({sp.ratio:.2f}x, 95% CI {lo:.2f}-{hi:.2f})"
        elif not sp.accepts(min_speedup):
            v.verdict = f"only {sp.ratio:.2f}x faster (< {min_speedup:g}x): not worth INT8's accuracy risk"
        else:
            v.verdict = f"eligible: {sp.ratio:.2f}x faster (95% CI {lo:.2f}-{hi:.2f}); {why}"
            eligible.append(v)
    if not eligible:
        if not judge_speed:
            return "fp32", f"no INT8 variant is within the accuracy budget and runs entirely on {device}"
        return "fp32", ("no INT8 variant is both within the accuracy budget and faster than FP32 beyond noise "
                        f"by >= {min_speedup:g}x")
    best = max(eligible, key=_quality_key) if not judge_speed else max(eligible, key=lambda v: v.speedup)
    return best.name, best.verdict.removeprefix("eligible: ")
