"""Task metric results and how reports record them (the metrics themselves: measure/accuracy.py).

A pluggable metric is any callable ``fn(outputs, labels, reference) -> MetricResult`` where
``outputs``/``reference`` map output names to arrays stacked over samples (first axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    higher_is_better: bool
    details: dict = field(default_factory=dict)


def accuracy_entry(result: MetricResult, reference: MetricResult | None) -> dict:
    """A metric result as reports store it, with its drop against the reference model's result
    (positive = worse, in the metric's units; ``drop_relative`` as a fraction of the reference)."""
    entry = {"metric": result.name, "value": float(result.value), "higher_is_better": bool(result.higher_is_better),
             "details": dict(result.details), "reference_value": None, "drop": None, "drop_relative": None}
    if reference is not None:
        ref = float(reference.value)
        drop = ref - float(result.value) if result.higher_is_better else float(result.value) - ref
        entry.update(reference_value=ref, drop=drop, drop_relative=(drop / abs(ref)) if ref else None)
    return entry
