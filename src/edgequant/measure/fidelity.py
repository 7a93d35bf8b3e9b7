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
from typing import Any, NamedTuple

import numpy as np

from ..errors import EdgequantError
from ..qmath import cosine, max_abs_error, sqnr_db
from .detection import SCORE_THRESHOLD, detection_proxies, pair_boxes
from .intervals import Proportion


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
    role: str | None = None                   # measure.roles: classifier | embedding | sequence | detection | dense
    nn_agreement: float | None = None         # embeddings: same nearest neighbour among the samples
    mean_sample_cosine: float | None = None   # embeddings: per-sample cosine, mean and minimum
    min_sample_cosine: float | None = None
    similarity_rank_corr: float | None = None  # embeddings: Spearman of all pairwise similarities (reported)
    similarity_shift: float | None = None      # embeddings: median change of the pairwise similarities
    nn_thin_margins: float | None = None       # embeddings: share of FP32 near-ties (top-2 closer than the shift)
    detection_agreement: float | None = None  # detection: same anchors above the score threshold
    box_error: float | None = None            # detection: mean box error of FP32's kept anchors (output units)
    box_scale: float | None = None            # detection: mean |FP32 box coordinate| there
    #: agreement proxy -> Proportion (successes, trials, unit): what the budget's Wilson interval uses
    counts: dict[str, Proportion] = field(default_factory=dict)
    #: measured on a strided subset of the evaluation data only: {"samples", "of", "stride"}
    evaluated_subset: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cosine": self.cosine, "sqnr_db": self.sqnr_db,
                             "max_abs_err": self.max_abs_err, "top1_agreement": self.top1_agreement}
        for key in ("role", "nn_agreement", "mean_sample_cosine", "min_sample_cosine", "similarity_rank_corr",
                    "similarity_shift", "nn_thin_margins", "detection_agreement",
                    "box_error", "box_scale"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.counts:
            d["intervals"] = {k: p.to_dict() for k, p in self.counts.items()}
        if self.evaluated_subset is not None:
            d["evaluated_subset"] = dict(self.evaluated_subset)
        return d


@dataclass(frozen=True)
class Fidelity(OutputFidelity):
    """Worst case over all outputs (lowest cosine/SQNR/agreement, highest error), and each output."""

    per_output: dict[str, OutputFidelity] = field(default_factory=dict)

    def per_output_dict(self) -> dict[str, dict[str, float | str | None]]:
        return {name: o.to_dict() for name, o in self.per_output.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fidelity:
        """The worst-case record back from :meth:`to_dict` (a measurement kept as JSON, e.g. by
        ``tune``'s cache); each output's own record is not in that form, so ``per_output`` is empty."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("counts", "per_output")}
        counts = {k: Proportion(c["successes"], c["trials"], c.get("unit", "samples"))
                  for k, c in (d.get("intervals") or {}).items()}
        return cls(**{k: v for k, v in d.items() if k in known}, counts=counts)


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


def position_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Sequence outputs ([N, T, C], any batch axes): fraction of positions whose arg-max matches."""
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.ndim < 2 or ref.shape[-1] < 2 or ref.shape != cand.shape:
        return None
    c = ref.shape[-1]
    return float(np.mean(np.argmax(ref.reshape(-1, c), axis=1) == np.argmax(cand.reshape(-1, c), axis=1)))


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x), np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=np.float64)
    return r


class EmbeddingProxies(NamedTuple):
    nn_agreement: float | None
    mean_sample_cosine: float
    min_sample_cosine: float
    similarity_rank_corr: float | None
    similarity_shift: float | None = None   # median |candidate - FP32| pairwise cosine
    nn_thin_margins: float | None = None    # share of samples whose FP32 top-2 neighbours are closer than that


def embedding_proxies(reference: np.ndarray, candidate: np.ndarray) -> EmbeddingProxies:
    """Nearest-neighbour agreement, mean and minimum per-sample cosine, rank correlation of the
    pairwise similarities of per-sample vectors, and why neighbours swap.

    Nearest neighbour: for each sample, the most similar other sample (cosine) under FP32 and under
    the candidate; agreement is the share of samples for which they are the same (retrieval).
    Rank correlation (Spearman) of all pairwise cosines: whether the whole similarity order holds.
    Why they swap: the candidate moves pairwise cosines by a median ``similarity_shift``, and a
    sample whose best and second-best FP32 neighbours are closer than that (``nn_thin_margins``,
    a share) is a near-tie that such a shift can flip: the evaluation set's density, not a defect.
    """
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, np.float64).reshape(len(candidate), -1)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    r, c = unit(ref), unit(cand)
    per_sample = np.sum(r * c, axis=1)
    nn = rank = shift = thin = None
    if len(r) >= 3:
        sr, sc = r @ r.T, c @ c.T
        iu = np.triu_indices(len(r), 1)
        a, b = _ranks(sr[iu]), _ranks(sc[iu])
        rank = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
        shift = float(np.median(np.abs(sr[iu] - sc[iu])))
        np.fill_diagonal(sr, -np.inf)
        np.fill_diagonal(sc, -np.inf)
        nn = float(np.mean(np.argmax(sr, axis=1) == np.argmax(sc, axis=1)))
        top2 = np.sort(sr, axis=1)[:, -2:]
        thin = float(np.mean(top2[:, 1] - top2[:, 0] < shift))
    return EmbeddingProxies(nn, float(per_sample.mean()), float(per_sample.min()), rank, shift, thin)


def _samples(arr: np.ndarray) -> int:
    return int(arr.shape[0]) if arr.ndim else 1


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    roles: Mapping[str, str] | None = None, score_threshold: float = SCORE_THRESHOLD,
                    padding: Mapping[str, np.ndarray] | None = None) -> Fidelity:
    """Cosine, SQNR (dB), max abs error of ``candidate`` against ``reference``, plus each output's
    role proxy: top-1 agreement (classifier), per-position agreement (sequence), nearest-neighbour
    agreement and per-sample cosine (embedding), decision agreement and box error (detection).
    Without ``roles`` every classifier-shaped output gets top-1 agreement. Agreement proxies
    carry their counts (``counts``) with the evaluation sample as the unit (measure.intervals).
    Metrics use each output over all samples; the overall values are the worst. ``padding``
    (output name -> ``[N, T]`` bool of real positions, :func:`edgequant.measure.padding.padding_masks`)
    leaves padding positions out: zero in both models for every proxy, skipped for per-position agreement.
    """
    if not reference:
        raise EdgequantError("reference has no outputs to compare")
    missing = [n for n in reference if n not in candidate]
    if missing:
        raise EdgequantError(f"candidate model lacks output(s) {', '.join(missing)} of the reference")
    for name, ref in reference.items():
        if np.shape(ref) != np.shape(candidate[name]):
            raise EdgequantError(f"output {name!r}: shape {np.shape(candidate[name])} differs from the "
                                 f"reference's {np.shape(ref)}")
    detection = [n for n in reference if roles and roles.get(n) == "detection"]
    boxes_of = pair_boxes(reference, detection)
    per: dict[str, OutputFidelity] = {}
    for name, ref in reference.items():
        ref_a, cand_a = np.asarray(ref), np.asarray(candidate[name])
        role = roles.get(name) if roles else None
        n = _samples(ref_a)
        real = padding.get(name) if padding else None
        if real is not None:
            if role == "sequence":     # per-position agreement over the real positions only
                ref_a, cand_a = ref_a[real], cand_a[real]
            else:
                keep = real.reshape(real.shape + (1,) * (ref_a.ndim - real.ndim))
                ref_a, cand_a = np.where(keep, ref_a, 0), np.where(keep, cand_a, 0)
        extra: dict[str, Any] = {}
        counts: dict[str, Proportion] = {}
        agree = None
        if role in (None, "classifier"):
            agree = top1_agreement(ref_a, cand_a)
            if agree is not None:
                counts["top1_agreement"] = Proportion(round(agree * n), n)
        elif role == "sequence":
            agree = position_agreement(ref_a, cand_a)
            if agree is not None:   # positions of one sample are correlated: samples are the unit
                counts["top1_agreement"] = Proportion(agree * n, n, "samples (per-position rate)")
        elif role == "embedding":
            proxies = embedding_proxies(ref_a, cand_a)
            extra.update(proxies._asdict())
            nn = proxies.nn_agreement
            if nn is not None:
                counts["nn_agreement"] = Proportion(round(nn * n), n)
        elif role == "detection" and name in boxes_of:
            box = boxes_of[name]
            det = detection_proxies(ref_a, cand_a, reference[box] if box else None,
                                    candidate[box] if box else None, score_threshold)
            extra.update(detection_agreement=det.agreement, box_error=det.box_error, box_scale=det.box_scale)
            if det.agreement is not None:   # anchors of one sample are correlated: samples are the unit
                counts["detection_agreement"] = Proportion(det.agreement * n, n, "samples (pooled anchor rate)")
        per[name] = OutputFidelity(cosine=cosine(ref_a, cand_a), sqnr_db=sqnr_db(ref_a, cand_a),
                                   max_abs_err=max_abs_error(ref_a, cand_a), top1_agreement=agree, role=role,
                                   counts=counts, **extra)

    def worst_output(key: str) -> OutputFidelity | None:
        """The output with the lowest value of ``key`` (None where no output has one)."""
        return min((o for o in per.values() if getattr(o, key) is not None), key=lambda o: getattr(o, key),
                   default=None)

    def lowest(key: str) -> tuple[float | None, Proportion | None]:
        """The worst output's value of an agreement proxy, with its counts."""
        worst = worst_output(key)
        return (getattr(worst, key), worst.counts.get(key)) if worst else (None, None)

    counts, worst = {}, {}
    for key in ("top1_agreement", "nn_agreement", "detection_agreement"):
        worst[key], prop = lowest(key)
        if prop is not None:
            counts[key] = prop
    boxed = [o for o in per.values() if o.box_error is not None]
    worst_box = max(boxed, key=lambda o: o.box_error / o.box_scale if o.box_scale else np.inf, default=None)
    worst_nn = worst_output("nn_agreement")    # why its neighbours swap goes with it
    return Fidelity(
        cosine=_worst([o.cosine for o in per.values()], min),
        sqnr_db=_worst([o.sqnr_db for o in per.values()], min),
        max_abs_err=_worst([o.max_abs_err for o in per.values()], max),
        mean_sample_cosine=lowest("mean_sample_cosine")[0], min_sample_cosine=lowest("min_sample_cosine")[0],
        similarity_rank_corr=lowest("similarity_rank_corr")[0],
        similarity_shift=worst_nn.similarity_shift if worst_nn else None,
        nn_thin_margins=worst_nn.nn_thin_margins if worst_nn else None,
        box_error=worst_box.box_error if worst_box else None, box_scale=worst_box.box_scale if worst_box else None,
        counts=counts, per_output=per, **worst)
