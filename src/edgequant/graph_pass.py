"""The pass interface: one step that rewrites an ONNX graph and says what it did.

Exact rewrites (PRelu decomposition, Q/DQ fix-ups) and the post-training algorithms to come
(cross-layer equalization, bias correction, range search, SmoothQuant, AdaRound) share it, so a
recipe is a list of passes and the report gets one line per pass from its :class:`PassResult`.
Data-driven passes read calibration samples and run models through ``PassContext.device``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx


@dataclass(frozen=True)
class PassResult:
    """What one pass did to a model."""

    name: str
    changed: int                 # places changed; 0 = the pass found nothing to do
    description: str             # one line for reports: what the pass does and why
    exact: bool                  # True when the model's FP32 function is unchanged
    unit: str = ""               # what ``changed`` counts, when it is not nodes ("tensors")
    notes: tuple[str, ...] = ()  # facts worth showing the user (e.g. per-layer gains)

    @property
    def label(self) -> str:
        """``name(count)``, the form recipes record in their pass lists."""
        return f"{self.name}({self.changed}{' ' + self.unit if self.unit else ''})"


@dataclass
class PassContext:
    """What a pass may use besides the graph (all optional: exact passes need none of it)."""

    target: str = "auto"
    calibration: Any = None      # edgequant.data.DataSource, for data-driven algorithms
    device: Any = None           # edgequant.devices.Device, where reconstructions run
    options: dict = field(default_factory=dict)


class GraphPass(ABC):
    """One rewrite of a ModelProto, in place."""

    name: str = "pass"
    description: str = ""
    exact: bool = True
    unit: str = ""

    @abstractmethod
    def run(self, model: onnx.ModelProto, context: PassContext) -> int:
        """Rewrite ``model`` in place; return how many places changed."""

    def apply(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        changed = self.run(model, context or PassContext())
        return PassResult(self.name, changed, self.description, self.exact, self.unit)


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass],
               context: PassContext | None = None) -> list[PassResult]:
    """Apply ``passes`` in order; one result each."""
    ctx = context or PassContext()
    return [p.apply(model, ctx) for p in passes]
