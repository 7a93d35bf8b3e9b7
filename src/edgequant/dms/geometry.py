"""Rotated square crops (regions of interest) and the point mappings in and out of them.

MediaPipe feeds each model a rotated square crop: the face crop is the detection box
scaled 1.5x and turned so the eyes are level; an eye crop is 2.3x the eye-corner distance
around the corners' midpoint. The same code builds the datasets and runs the frame pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .blazeface import KP_LEFT_EYE, KP_RIGHT_EYE, Detection

FACE_SCALE = 1.5
EYE_SCALE = 2.3


@dataclass(frozen=True)
class Roi:
    """A square region in image pixels: centre, side length, rotation (radians, y down)."""

    cx: float
    cy: float
    size: float
    angle: float = 0.0
    flip: bool = False  # mirror left-right inside the crop (MediaPipe does it for one eye)


def _axes(roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(roi.angle), math.sin(roi.angle)
    ux = np.array([c, s]) * (-1.0 if roi.flip else 1.0)
    uy = np.array([-s, c])
    return ux, uy


def to_image(points: np.ndarray, roi: Roi, out: int) -> np.ndarray:
    """Map (K, 2+) crop pixel coordinates (0..out) to image pixel coordinates (K, 2)."""
    p = np.asarray(points, dtype=np.float64)[:, :2] / out - 0.5
    ux, uy = _axes(roi)
    return np.array([roi.cx, roi.cy]) + roi.size * (p[:, :1] * ux + p[:, 1:2] * uy)


def to_crop(points: np.ndarray, roi: Roi, out: int) -> np.ndarray:
    """Map (K, 2) image pixel coordinates into crop pixel coordinates (inverse of to_image)."""
    d = np.asarray(points, dtype=np.float64)[:, :2] - np.array([roi.cx, roi.cy])
    ux, uy = _axes(roi)
    return (np.stack([d @ ux, d @ uy], axis=1) / roi.size + 0.5) * out


def crop(image: np.ndarray, roi: Roi, out: int) -> np.ndarray:
    """Bilinear (out, out, C) float32 crop of an (H, W, C) image; borders replicate."""
    img = np.asarray(image, dtype=np.float32)
    h, w, ch = img.shape
    ux, uy = _axes(roi)
    step = roi.size / out
    # sample position (in index space, pixel centres at integers) of crop pixel (u, v)
    t = (np.arange(out, dtype=np.float32) + 0.5) * step - roi.size / 2
    x = (roi.cx - 0.5) + t[None, :] * np.float32(ux[0]) + t[:, None] * np.float32(uy[0])
    y = (roi.cy - 0.5) + t[None, :] * np.float32(ux[1]) + t[:, None] * np.float32(uy[1])
    x = np.clip(x, 0, w - 1, out=x)
    y = np.clip(y, 0, h - 1, out=y)
    x0 = np.minimum(x.astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(y.astype(np.int64), max(h - 2, 0))
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = img.reshape(h * w, ch)
    i00 = (y0 * w + x0).ravel()
    dx, dy = (1 if w > 1 else 0), (w if h > 1 else 0)
    g = lambda idx: flat.take(idx, axis=0).reshape(out, out, ch)  # noqa: E731
    top = g(i00) * (1 - fx) + g(i00 + dx) * fx
    bot = g(i00 + dy) * (1 - fx) + g(i00 + dy + dx) * fx
    return top * (1 - fy) + bot * fy


def face_roi(det: Detection, scale: float = FACE_SCALE) -> Roi:
    """MediaPipe's face_detection_front_detection_to_roi: eyes level, long side x1.5.

    ``det`` must be in image pixels (see :func:`detection_to_image`).
    """
    (rx, ry), (lx, ly) = det.keypoints[KP_RIGHT_EYE], det.keypoints[KP_LEFT_EYE]
    return Roi(cx=det.xmin + det.width / 2, cy=det.ymin + det.height / 2,
               size=max(det.width, det.height) * scale, angle=math.atan2(ly - ry, lx - rx))


def detection_to_image(det: Detection, roi: Roi) -> Detection:
    """Map a detection from normalized detector-input coordinates to image pixels.

    ``roi`` is the (unrotated) region the detector input was cropped from.
    """
    corners = to_image(np.array([[det.xmin, det.ymin], [det.xmin + det.width,
                                  det.ymin + det.height]]), roi, 1)
    kps = to_image(det.keypoints, roi, 1).astype(np.float32)
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return Detection(score=det.score, xmin=float(x0), ymin=float(y0), width=float(x1 - x0),
                     height=float(y1 - y0), keypoints=kps)


def letterbox_roi(width: int, height: int) -> Roi:
    """The square around a whole frame (MediaPipe keeps the aspect ratio for the detector)."""
    return Roi(cx=width / 2, cy=height / 2, size=float(max(width, height)))


def eye_roi(corner_a: np.ndarray, corner_b: np.ndarray, flip: bool = False,
            scale: float = EYE_SCALE) -> Roi:
    """MediaPipe's iris_landmark_landmarks_to_roi: square 2.3x the corner distance."""
    a, b = np.asarray(corner_a, dtype=np.float64)[:2], np.asarray(corner_b, dtype=np.float64)[:2]
    d = b - a
    return Roi(cx=float((a[0] + b[0]) / 2), cy=float((a[1] + b[1]) / 2),
               size=float(np.hypot(*d) * scale), angle=math.atan2(d[1], d[0]), flip=flip)
