"""Zoo task metrics, ``benchmarks.zoo.metrics:NAME`` (``fn(outputs, labels, reference)``).

Where a model has no human labels here, the metric compares with the FP32 outputs in the
model's own task terms (mask IoU, landmark pixels, box pixels), never in raw tensor error.
"""

from __future__ import annotations

import numpy as np

from edgequant.errors import EdgequantError
from edgequant.metrics import MetricResult

Outputs = dict[str, np.ndarray]


def _only(outputs: Outputs, what: str, ndim: int | None = None) -> np.ndarray:
    """The largest output (by values per sample), optionally with rank ``ndim``."""
    cands = [np.asarray(v) for v in outputs.values() if ndim is None or np.asarray(v).ndim == ndim]
    if not cands:
        raise EdgequantError(f"{what}: no output of rank {ndim} in {sorted(outputs)}")
    return max(cands, key=lambda a: a[:1].size)


def _ref(reference: Outputs | None, what: str) -> Outputs:
    if reference is None:
        raise EdgequantError(f"metric {what}: needs the FP32 reference outputs")
    return reference


def _miou(out: np.ndarray, ref: np.ndarray, threshold: float) -> MetricResult:
    a = out.reshape(out.shape[0], -1) > threshold
    b = ref.reshape(ref.shape[0], -1) > threshold
    ious = []
    for fg_a, fg_b in zip(a, b, strict=True):
        per_class = []
        for x, y in ((fg_a, fg_b), (~fg_a, ~fg_b)):
            union = np.logical_or(x, y).sum()
            if union:
                per_class.append(np.logical_and(x, y).sum() / union)
        ious.append(np.mean(per_class) if per_class else 1.0)
    return MetricResult("mask_miou", float(np.mean(ious)), True,
                        {"threshold": threshold, "worst_sample": float(np.min(ious)),
                         "fp32_foreground_fraction": float(b.mean())})


def mask_miou(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Mean IoU (foreground and background) of the mask thresholded at 0.5 against FP32's mask."""
    ref = _ref(reference, "mask_miou")
    return _miou(_only(outputs, "mask_miou"), _only(ref, "mask_miou"), 0.5)


def mask_logits_miou(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Mean IoU of a one-channel 4-D mask output given as logits (MediaPipe's pose segmentation),
    thresholded at 0 (probability 0.5), against FP32's. Picks that output among others (landmarks,
    heatmaps) by its shape: one channel of H x W per sample (batch dims of 1 aside), the largest."""
    def mask(outs: Outputs) -> np.ndarray:
        arrays = [np.asarray(v) for v in outs.values()]
        cands = [a for a in arrays if a.ndim >= 4 and min(a.shape[-2:]) > 1 and int(np.prod(a.shape[1:-2])) == 1]
        if not cands:
            raise EdgequantError(f"mask_logits_miou: no one-channel H x W output in {sorted(outs)}")
        return max(cands, key=lambda a: a[:1].size)

    res = _miou(mask(outputs), mask(_ref(reference, "mask_logits_miou")), 0.0)
    return MetricResult("mask_logits_miou", res.value, True, res.details)


def text_map_miou(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """DB text detection: mean IoU of the probability map thresholded at 0.3 (PP-OCR's
    ``thresh``) against FP32's map: the text regions the post-processing would box."""
    ref = _ref(reference, "text_map_miou")
    res = _miou(_only(outputs, "text_map_miou"), _only(ref, "text_map_miou"), 0.3)
    return MetricResult("text_map_miou", res.value, True, res.details)


def landmark_px(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Mean x/y displacement (input pixels) of the landmark output (the largest; x, y, z
    triples) from FP32's."""
    ref = _ref(reference, "landmark_px")
    out, want = _only(outputs, "landmark_px"), _only(ref, "landmark_px")
    if out.shape != want.shape or out[:1].size % 3:
        raise EdgequantError(f"landmark_px: output shape {out.shape} vs FP32 {want.shape}")
    a, b = out.reshape(out.shape[0], -1, 3), want.reshape(want.shape[0], -1, 3)
    d = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)
    return MetricResult("landmark_px", float(d.mean()), False,
                        {"p95_px": float(np.percentile(d, 95)), "points": int(a.shape[1])})


def _split_detector(outputs: Outputs) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N, A], boxes [N, A, R]) of an SSD-style detector (MediaPipe palm/pose): the
    output with one value per anchor and the one with R >= 4 values per anchor."""
    arrs = [np.asarray(v) for v in outputs.values()]
    scores = [a for a in arrs if a.ndim >= 2 and a.shape[-1] == 1]
    boxes = [a for a in arrs if a.ndim >= 2 and a.shape[-1] >= 4]
    if len(scores) != 1 or len(boxes) != 1:
        raise EdgequantError(f"box_px: need one [N, A, 1] score and one [N, A, >=4] box output, "
                             f"got {[a.shape for a in arrs]}")
    n = scores[0].shape[0]
    return scores[0].reshape(n, -1), boxes[0].reshape(n, -1, boxes[0].shape[-1])


def box_px(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """SSD detector vs FP32: mean |box centre/size offset| (input pixels) on the 5 anchors FP32
    scores highest per sample; details: agreement of the best anchor's detect/no-detect decision."""
    ref = _ref(reference, "box_px")
    s, b = _split_detector(outputs)
    rs, rb = _split_detector(ref)
    top = np.argsort(-rs, axis=1)[:, :5]
    rows = np.arange(s.shape[0])[:, None]
    err = np.abs(b[rows, top, :4] - rb[rows, top, :4]).mean()
    best = top[:, 0]
    same = np.mean((s[np.arange(s.shape[0]), best] > 0) == (rs[np.arange(s.shape[0]), best] > 0))
    return MetricResult("box_px", float(err), False,
                        {"best_anchor_decision_agreement": float(same),
                         "fp32_detections": int((rs.max(axis=1) > 0).sum())})


def binary_accuracy(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Yes/no decisions (the smallest output, one probability per sample, > 0.5) against the
    labels: voice activity per chunk (silero_vad), wake word per window (openWakeWord)."""
    if labels is None:
        raise EdgequantError("binary_accuracy: the eval data needs a 'labels' array")
    prob = min((np.asarray(v) for v in outputs.values()), key=lambda a: a[:1].size).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if y.shape != prob.shape:
        raise EdgequantError(f"binary_accuracy: {y.shape[0]} labels for {prob.shape[0]} samples")
    return MetricResult("binary_accuracy", float(np.mean((prob > 0.5) == y)), True,
                        {"positive_fraction": float(y.mean())})
