"""BlazeFace (MediaPipe face detection short range) anchors and decoding, in numpy.

Mirrors MediaPipe's face_detection_short_range graph: SSD anchors (strides 8,16,16,16,
fixed size), box/keypoint decoding in the 128x128 input frame, sigmoid scores clipped at
+-100, and weighted non-maximum suppression (IoU 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

INPUT_SIZE = 128
NUM_ANCHORS = 896
SCORE_CLIP = 100.0
MIN_SCORE = 0.5
NMS_IOU = 0.3
# Keypoint order of the model: subject's right eye, left eye, nose tip, mouth centre,
# right ear tragion, left ear tragion (right eye appears on the image's left side).
KP_RIGHT_EYE, KP_LEFT_EYE = 0, 1


@dataclass(frozen=True)
class Detection:
    """One face in normalized [0,1] input coordinates (x right, y down)."""

    score: float
    xmin: float
    ymin: float
    width: float
    height: float
    keypoints: np.ndarray  # (6, 2) normalized x, y


@lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """(896, 2) anchor centres (x, y) normalized; anchor width/height are fixed at 1."""
    strides = (8, 16, 16, 16)
    out: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        # Consecutive layers with the same stride share one feature map: 2 anchors each.
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        fm = int(np.ceil(INPUT_SIZE / strides[layer]))
        for y in range(fm):
            for x in range(fm):
                out.extend([((x + 0.5) / fm, (y + 0.5) / fm)] * per_cell)
        layer = last
    arr = np.asarray(out, dtype=np.float32)
    assert arr.shape == (NUM_ANCHORS, 2)
    return arr


def scores(classificators: np.ndarray) -> np.ndarray:
    """Sigmoid face scores per anchor from raw logits of shape (..., 896, 1) or (..., 896)."""
    logits = np.asarray(classificators, dtype=np.float64)
    if logits.shape[-1] == 1:
        logits = logits[..., 0]
    logits = np.clip(logits, -SCORE_CLIP, SCORE_CLIP)
    return 1.0 / (1.0 + np.exp(-logits))


def max_score(classificators: np.ndarray) -> np.ndarray:
    """Best face score of each sample: shape (N,) for logits (N, 896[, 1])."""
    s = scores(classificators)
    return s.reshape(s.shape[0], -1).max(axis=1)


def _decode_boxes(regressors: np.ndarray) -> np.ndarray:
    """(896, 16) raw -> (896, 16) normalized [xc, yc, w, h, kx0, ky0, ...]."""
    raw = np.asarray(regressors, dtype=np.float64).reshape(NUM_ANCHORS, 16) / INPUT_SIZE
    a = anchors().astype(np.float64)
    out = raw.copy()
    out[:, 0] += a[:, 0]
    out[:, 1] += a[:, 1]
    out[:, 4::2] += a[:, :1]
    out[:, 5::2] += a[:, 1:2]
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [xmin, ymin, xmax, ymax] box with many."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def decode(regressors: np.ndarray, classificators: np.ndarray,
           min_score: float = MIN_SCORE) -> list[Detection]:
    """Faces of one sample, best first, after MediaPipe's weighted NMS."""
    s = scores(np.asarray(classificators).reshape(NUM_ANCHORS))
    dec = _decode_boxes(regressors)
    keep = np.flatnonzero(s >= min_score)
    if keep.size == 0:
        return []
    order = keep[np.argsort(-s[keep], kind="stable")]
    corners = np.stack([dec[:, 0] - dec[:, 2] / 2, dec[:, 1] - dec[:, 3] / 2,
                        dec[:, 0] + dec[:, 2] / 2, dec[:, 1] + dec[:, 3] / 2], axis=1)
    found: list[Detection] = []
    while order.size:
        ious = _iou(corners[order[0]], corners[order])
        group = order[ious > NMS_IOU]
        w = s[group][:, None]
        merged = (dec[group] * w).sum(axis=0) / w.sum()  # weighted average of the cluster
        found.append(Detection(
            score=float(s[order[0]]),
            xmin=float(merged[0] - merged[2] / 2), ymin=float(merged[1] - merged[3] / 2),
            width=float(merged[2]), height=float(merged[3]),
            keypoints=merged[4:].reshape(6, 2).astype(np.float32)))
        order = order[ious <= NMS_IOU]
    return found
