"""The record a quantization recipe returns: what ran, what it produced, what stayed float."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class QuantizationSummary:
    """What ``quantize_static_optimized`` did and the INT8 coverage ORT will actually run.

    ``float_compute_nodes`` maps each compute node ORT still runs in float (after its graph
    optimization) to the most likely reason, so a user can act on it (exclude, change types).
    """

    model_in: str
    model_out: str
    passes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    optimized_ops: dict[str, int] = field(default_factory=dict)
    quantized_compute_ops: int = 0
    compute_ops: int = 0
    float_compute_nodes: dict[str, str] = field(default_factory=dict)
    size_in_bytes: int = 0
    size_out_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        """Fraction of compute ops that run as integer kernels (1.0 when there are none)."""
        return self.quantized_compute_ops / self.compute_ops if self.compute_ops else 1.0

    @property
    def fully_quantized(self) -> bool:
        return self.quantized_compute_ops == self.compute_ops

    @property
    def compression(self) -> float:
        return self.size_in_bytes / self.size_out_bytes if self.size_out_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(coverage=self.coverage, compression=self.compression)
        return d
