"""Output fidelity: how close a candidate model's outputs are to a reference model's.

Outputs are collected per run and **stacked along a new first axis**: ``outputs[name][i]`` is
exactly what run ``i`` returned, so a batch-1 classifier ``[1, C]`` becomes ``[N, 1, C]`` and a
model without a batch dim ``[C]`` becomes ``[N, C]``. Every run must return the same shape for
an output (fixed-shape outputs; variable-length outputs such as detections need a task metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EdgequantError
from ..qmath import cosine, max_abs_error, sqnr_db


@dataclass(frozen=True)
class Collected:
    """Outputs of each model over the same samples, plus the samples' labels (if any)."""

    outputs: tuple[dict[str, np.ndarray], ...]
    labels: np.ndarray | None
    count: int


def feeds_of(sample: Any) -> tuple[Mapping[str, np.ndarray], Any]:
    """Accept ``data.Sample`` objects (``.feeds``/``.label``) or plain feed dicts."""
    if isinstance(sample, Mapping):
        return sample, None
    return sample.feeds, getattr(sample, "label", None)


def _stack(name: str, runs: list[np.ndarray], model: str) -> np.ndarray:
    shapes = {r.shape for r in runs}
    if len(shapes) > 1:
        raise EdgequantError(f"{model}: output {name!r} changes shape across samples "
                             f"({', '.join(str(s) for s in sorted(shapes)[:3])}); fidelity needs fixed shapes")
    return np.stack(runs)


def stack_outputs(model_paths: Sequence[str], per_sample: Iterable[tuple[list[dict[str, np.ndarray]], Any]],
                  ) -> Collected:
    """Stack a device's per-sample outputs (see ``Device.iter_outputs``) along a new first axis."""
    per_run: list[dict[str, list[np.ndarray]]] = [{} for _ in model_paths]
    labels: list[Any] = []
    count = 0
    for outs, label in per_sample:
        labels.append(label)
        for i, values in enumerate(outs):
            for n, v in values.items():
                per_run[i].setdefault(n, []).append(np.asarray(v))
        count += 1
    if count == 0:
        raise EdgequantError("the data source produced no samples")
    outputs = tuple({n: _stack(n, runs, model_paths[i]) for n, runs in d.items()} for i, d in enumerate(per_run))
    stacked_labels = None
    if all(lb is not None for lb in labels):
        try:
            stacked_labels = np.stack([np.asarray(lb) for lb in labels])
        except ValueError:
            raise EdgequantError("labels change shape across samples; cannot stack them") from None
    return Collected(outputs=outputs, labels=stacked_labels, count=count)


@dataclass(frozen=True)
class OutputFidelity:
    cosine: float
    sqnr_db: float
    max_abs_err: float
    top1_agreement: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"cosine": self.cosine, "sqnr_db": self.sqnr_db, "max_abs_err": self.max_abs_err,
                "top1_agreement": self.top1_agreement}


@dataclass(frozen=True)
class Fidelity(OutputFidelity):
    """Worst case over all outputs (lowest cosine/SQNR/agreement, highest error), and each output."""

    per_output: dict[str, OutputFidelity] = field(default_factory=dict)

    def per_output_dict(self) -> dict[str, dict[str, float | None]]:
        return {name: o.to_dict() for name, o in self.per_output.items()}


def class_scores(arr: np.ndarray) -> np.ndarray | None:
    """``[N, C]`` view of a classifier-like output (``[N, C]`` or ``[N, 1, C]``, C > 1), else None."""
    if arr.ndim == 2 and arr.shape[1] > 1:
        return arr
    if arr.ndim == 3 and arr.shape[1] == 1 and arr.shape[2] > 1:
        return arr[:, 0, :]
    return None


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Fraction of samples whose arg-max class matches; None for non-classifier outputs."""
    ref, cand = class_scores(np.asarray(reference)), class_scores(np.asarray(candidate))
    if ref is None or cand is None or ref.shape != cand.shape:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))


def _worst(values: list[float], pick: Any) -> float:
    if any(math.isnan(v) for v in values):
        return float("nan")
    return float(pick(values))


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Fidelity:
    """Cosine, SQNR (dB), max abs error and top-1 agreement of ``candidate`` against ``reference``.

    Metrics use each output flattened over all samples; the overall values are the worst case.
    """
    if not reference:
        raise EdgequantError("reference has no outputs to compare")
    missing = [n for n in reference if n not in candidate]
    if missing:
        raise EdgequantError(f"candidate model lacks output(s) {', '.join(missing)} of the reference")
    per: dict[str, OutputFidelity] = {}
    for name, ref in reference.items():
        ref_a, cand_a = np.asarray(ref), np.asarray(candidate[name])
        if ref_a.shape != cand_a.shape:
            raise EdgequantError(f"output {name!r}: shape {cand_a.shape} differs from the reference's {ref_a.shape}")
        per[name] = OutputFidelity(cosine=cosine(ref_a, cand_a), sqnr_db=sqnr_db(ref_a, cand_a),
                                   max_abs_err=max_abs_error(ref_a, cand_a),
                                   top1_agreement=top1_agreement(ref_a, cand_a))
    agreements = [o.top1_agreement for o in per.values() if o.top1_agreement is not None]
    return Fidelity(
        cosine=_worst([o.cosine for o in per.values()], min),
        sqnr_db=_worst([o.sqnr_db for o in per.values()], min),
        max_abs_err=_worst([o.max_abs_err for o in per.values()], max),
        top1_agreement=min(agreements) if agreements else None,
        per_output=per)
