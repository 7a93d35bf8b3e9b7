"""Label-free proxies for anchor-based detectors (SSD/BlazeFace-style heads).

Such a head has a per-anchor score output (``[N, A]`` or ``[N, A, 1]``) and a sibling box output
``[N, A, 4+k]`` (box, then optional keypoints). What matters after INT8 is (1) that the same
anchors fire, (2) that the boxes of the anchors FP32 keeps stay where they were. Cosine over all
anchors hides both: most anchors are confident background in either model.

- decision agreement: among anchors where FP32 *or* the candidate scores above the threshold, the
  share where both do (pooled over samples); None when no anchor fires in either model.
- box error: mean absolute error of the first four box coordinates over the anchors FP32 keeps, in
  the output's own units (pixels for BlazeFace's raw regressors), and the mean absolute FP32
  coordinate there as its scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: An anchor "fires" when its score (sigmoid of the raw value if the output is not already in
#: [0, 1]) exceeds this; MediaPipe's BlazeFace uses 0.5 as well.
SCORE_THRESHOLD = 0.5
BOX_COORDS = 4


@dataclass(frozen=True)
class DetectionProxies:
    agreement: float | None        # decision agreement over anchors that fire in either model
    agree_count: float             # pooled anchors where both fire; fired_count where either does
    fired_count: int
    box_error: float | None        # mean |box - FP32 box| over anchors FP32 keeps (output units)
    box_scale: float | None        # mean |FP32 box coordinate| over the same anchors
    kept: int                      # anchors FP32 keeps, over all samples


def anchor_scores(arr: np.ndarray) -> np.ndarray | None:
    """``[N, A]`` view of a per-anchor score output (``[N, ..., A]`` or ``[N, ..., A, 1]``)."""
    a = np.asarray(arr)
    if a.ndim >= 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim < 2 or a.shape[-1] < 2:
        return None
    return a.reshape(a.shape[0], -1)


def box_view(arr: np.ndarray) -> np.ndarray | None:
    """``[N, A, K]`` view of a per-anchor box output (K >= 4)."""
    a = np.asarray(arr)
    if a.ndim < 3 or a.shape[-1] < BOX_COORDS or a.shape[-2] < 2:
        return None
    return a.reshape(a.shape[0], -1, a.shape[-1])


def is_score_output(arr: np.ndarray) -> bool:
    a = np.asarray(arr)
    return a.ndim >= 2 and (a.shape[-1] == 1 or a.ndim == 2) and anchor_scores(a) is not None


def pair_boxes(outputs: Mapping[str, np.ndarray], detection: list[str]) -> dict[str, str | None]:
    """Each detection score output -> its box output (same anchor count), or None."""
    boxes = {n: box_view(outputs[n]) for n in detection if not is_score_output(outputs[n])}
    pairs = {}
    for name in detection:
        if not is_score_output(outputs[name]):
            continue
        anchors = anchor_scores(outputs[name]).shape[1]
        pairs[name] = next((b for b, v in boxes.items() if v is not None and v.shape[1] == anchors), None)
    return pairs


def _probabilities(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as probabilities: logits (values outside [0, 1] in FP32) go through a sigmoid."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.min() < 0.0 or ref.max() > 1.0:
        def sigmoid(x: np.ndarray) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-np.clip(x, -100.0, 100.0)))
        return sigmoid(ref), sigmoid(cand)
    return ref, cand


def detection_proxies(ref_scores: np.ndarray, cand_scores: np.ndarray, ref_boxes: np.ndarray | None = None,
                      cand_boxes: np.ndarray | None = None, threshold: float = SCORE_THRESHOLD) -> DetectionProxies:
    """Decision agreement above ``threshold`` and the box error of the anchors FP32 keeps."""
    rs, cs = _probabilities(anchor_scores(ref_scores), anchor_scores(cand_scores))
    ref_on, cand_on = rs > threshold, cs > threshold
    either, both = int(np.sum(ref_on | cand_on)), int(np.sum(ref_on & cand_on))
    agreement = both / either if either else None
    box_error = box_scale = None
    kept = int(ref_on.sum())
    if ref_boxes is not None and cand_boxes is not None and kept:
        rb, cb = box_view(ref_boxes), box_view(cand_boxes)
        if rb is not None and cb is not None and rb.shape[:2] == ref_on.shape:
            r, c = rb[ref_on][:, :BOX_COORDS].astype(np.float64), cb[ref_on][:, :BOX_COORDS].astype(np.float64)
            box_error, box_scale = float(np.mean(np.abs(r - c))), float(np.mean(np.abs(r)))
    return DetectionProxies(agreement, float(both), either, box_error, box_scale, kept)
