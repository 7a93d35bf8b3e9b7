"""What the search adds to report.json/html: trace, Pareto plot, method advice, float-node reasons."""

from __future__ import annotations

from collections.abc import Sequence

from .search import SearchState, quality_score
from .trials import Reference, Trial

SEED_RULE = "quick check: dynamic; production: static; accuracy-sensitive: QAT"


def quality_summary(t: Trial) -> str:
    if t.error or t.fidelity is None:
        return "–"
    fid = t.fidelity
    parts = []
    if t.accuracy is not None:
        parts.append(f"{t.accuracy['metric']} {t.accuracy['value']:.4f} (drop {t.accuracy['drop']:+.4f})")
    for key, label in (("top1_agreement", "agreement"), ("nn_agreement", "NN agreement"),
                       ("detection_agreement", "detection agreement")):
        if fid.get(key) is not None:   # the role's own proxy, so the trace shows what the budget judged
            parts.append(f"{label} {fid[key]:.3f}")
    parts.append(f"cosine {fid['cosine']:.4f}")
    return ", ".join(parts)


def coverage_summary(t: Trial) -> str | None:
    c = t.coverage
    return f"{c['quantized_compute_ops']}/{c['compute_ops']} INT8" if c else None


def trace_rows(state: SearchState, target: str) -> list[dict]:
    """One row per candidate, in the order tried (the report's ``search_trace``)."""
    rows = []
    for t in state.trials:
        rows.append({
            "name": t.name, "stage": t.recipe.stage, "why": t.recipe.why,
            "recipe": t.recipe_dict, "recipe_summary": t.recipe.summary(target),
            "speedup": t.speedup, "speedup_ci": list(t.speedup_ci) if t.speedup_ci else None,
            "fidelity": t.fidelity, "accuracy": t.accuracy, "quality_summary": quality_summary(t),
            "coverage": t.coverage, "coverage_summary": coverage_summary(t),
            "within_budget": t.within_budget if t.error is None else None,
            "budget_decision": t.budget_decision if t.error is None else None,
            "float_nodes": list(t.recipe.exclude), "int16_tensors": list(t.recipe.int16_tensors),
            "cached": t.quantized_cached, "quantized_on": t.quantized_on, "outcome": t.outcome(),
        })
    return rows


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """Trials no other trial beats on both speed and quality."""
    ok = [t for t in trials if t.ok and t.speedup is not None]
    return sorted((t for t in ok if not any(
        o is not t and o.speedup >= t.speedup and quality_score(o) >= quality_score(t)
        and (o.speedup > t.speedup or quality_score(o) > quality_score(t)) for o in ok)),
        key=lambda t: t.speedup)


def _quality_axis(ref: Reference, trials: Sequence[Trial]) -> tuple[str, callable]:
    if ref.fp32_accuracy is not None:
        return f"{ref.fp32_accuracy['metric']} (task metric)", lambda t: t.accuracy["value"]
    if all((t.fidelity or {}).get("top1_agreement") is not None for t in trials if t.ok):
        return "top-1 agreement with FP32", lambda t: t.fidelity["top1_agreement"]
    return "output cosine vs FP32", lambda t: t.fidelity["cosine"]


def pareto_plot(state: SearchState, ref: Reference, recommended: str) -> str | None:
    """Accuracy against trial speedup for every candidate; the front and the pick highlighted."""
    from ..report.plots import _to_uri, plt

    ok = [t for t in state.trials if t.ok and t.speedup is not None]
    if not ok:
        return None
    label, y = _quality_axis(ref, ok)
    front = pareto_front(ok)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for t in ok:
        color = "#16a34a" if t.within_budget else "#dc2626"
        ax.scatter([t.speedup], [y(t)], s=36, zorder=3, facecolors=color if t.within_budget else "none",
                   edgecolors=color)
        if t in front or t.within_budget or t.name in (recommended, "static", "dynamic"):
            # label what matters; the rest are named in the trace table (labels would pile up)
            ax.annotate(t.name, (t.speedup, y(t)), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if len(front) > 1:
        ax.plot([t.speedup for t in front], [y(t) for t in front], color="#2563eb", lw=1, ls="-", zorder=2,
                label="Pareto front")
    pick = next((t for t in ok if t.name == recommended), None)
    if pick is not None:
        ax.scatter([pick.speedup], [y(pick)], marker="*", s=220, color="#f59e0b", zorder=4, label=f"recommended: {pick.name}")
    fp32_y = ref.fp32_accuracy["value"] if ref.fp32_accuracy else 1.0
    ax.scatter([1.0], [fp32_y], marker="s", color="#6b7280", zorder=3, label="fp32")
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs fp32 (trial, interleaved)")
    ax.set_ylabel(label)
    ax.set_title("Search: accuracy vs speed (filled = within budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _to_uri(fig)


def float_reasons(t: Trial) -> list[str]:
    """'node: why' for every node a recipe keeps out of INT8."""
    return [f"{node}: {why}" for node, why in t.recipe.float_reasons]


def recommendation_detail(state: SearchState, recommended: str) -> str | None:
    """Names the nodes kept in float (or 16-bit) by the recommended candidate, and why."""
    t = state.get(recommended)
    if t is None or not (t.recipe.exclude or t.recipe.int16_tensors):
        return None
    parts = []
    if t.recipe.exclude:
        parts.append(f"kept in float: {', '.join(t.recipe.exclude)}")
    if t.recipe.int16_tensors:
        parts.append(f"16-bit activations: {', '.join(t.recipe.int16_tensors)}")
    reasons = float_reasons(t)
    return "; ".join(parts) + (f" (because {'; '.join(reasons)})" if reasons else "")


def advice(state: SearchState, variants: Sequence[dict], recommended: str) -> str:
    """Method advice grounded in what was measured, in the seed's terms."""
    # a candidate whose compute all stayed float (e.g. dynamic on a conv net) is no INT8 answer
    within = [t for t in state.trials if t.ok and t.within_budget
              and (t.coverage is None or t.coverage["quantized_compute_ops"] > 0)]
    chosen = state.get(recommended)
    msg: list[str] = []
    if chosen is not None:
        dyn_ok = any(t.recipe.mode == "dynamic" for t in within)
        static_ok = any(t.recipe.mode == "static" for t in within)
        if chosen.recipe.mode == "dynamic":
            msg.append("Dynamic quantization won" + (
                ": it is the only post-training recipe within the budget" if not static_ok else
                ": a static recipe also met the budget but was slower here") + ".")
        else:
            kind = ("with the target defaults" if chosen.name == "static"
                    else f"as {chosen.name} ({chosen.recipe.why})")
            msg.append(f"Static quantization won {kind}" + (
                " (dynamic was also within budget but slower)." if dyn_ok else "."))
            out_of_int8 = [*chosen.recipe.exclude, *chosen.recipe.int16_tensors]
            if out_of_int8:
                msg.append(f"It meets the budget only with {len(out_of_int8)} node(s)/tensor(s) out of INT8 "
                           f"({', '.join(out_of_int8)}; reasons in the recommendation); the rest runs INT8.")
    elif not within and any(t.ok and t.budget_decision == "undecided" for t in state.trials):
        undecided = [t for t in state.trials if t.ok and t.budget_decision == "undecided"]
        msg.append(f"{len(undecided)} candidate(s) ({', '.join(t.name for t in undecided[:4])}) are undecided: the "
                   "evaluation set is too small for their agreement's 95% interval to clear the budget "
                   f"({undecided[0].budget_why}). Evaluate on more samples before choosing; undecided candidates "
                   "are never recommended.")
    elif not within:
        best = max((t for t in state.trials if t.ok), key=quality_score, default=None)
        best_txt = f" (closest: {best.name}, {quality_summary(best)})" if best else ""
        msg.append(f"No post-training candidate that runs INT8 met the accuracy budget{best_txt}. This model is "
                   "accuracy-sensitive: the seed's rule says QAT — quantization-aware training — or a looser budget.")
    else:
        names = ", ".join(t.name for t in within[:4])
        fewest = [t for t in within if t.recipe.exclude or t.recipe.int16_tensors]
        msg.append(f"Within budget but not faster than FP32 beyond noise on this CPU: {names}; FP32 stays the answer.")
        if fewest and not any(not (t.recipe.exclude or t.recipe.int16_tensors) for t in within):
            msg.append("Post-training quantization meets the budget only with nodes kept in float, which costs the "
                       "speed: QAT would let those layers stay INT8.")
    if recommended == "fp32-opt":
        msg.insert(0, "The fastest model within budget is fp32-opt: the FP32 graph after edgequant's exact "
                      "rewrites, faster than every INT8 candidate measured here.")
    if state.stopped:
        msg.append(f"The search stopped early ({state.stopped}); results are what was found by then.")
    msg.append(f"Seed rule: {SEED_RULE}.")
    return " ".join(msg)
