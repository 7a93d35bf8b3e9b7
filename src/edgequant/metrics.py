"""Task metrics: the result type and the built-in top-1 accuracy.

A pluggable metric is any callable ``fn(outputs, labels, reference) -> MetricResult`` where
``outputs``/``reference`` map output names to arrays stacked over samples (first axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    higher_is_better: bool
    details: dict = field(default_factory=dict)
