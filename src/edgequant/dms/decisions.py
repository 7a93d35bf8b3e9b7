"""Driver-monitoring decisions from landmark arrays: eye open/closed (EAR) and gaze.

Pure numpy on stacked model outputs, so FP32 and INT8 decisions can be compared sample by
sample. Indices are MediaPipe face-mesh (468 points) and iris-model output positions.
"""

from __future__ import annotations

import numpy as np

NUM_FACE_LANDMARKS = 468
# Six-point eye aspect ratio (Soukupova & Cech 2016) on the face mesh: p1..p6 =
# outer corner, upper lid x2, inner corner, lower lid x2 (order p1,p2,p3,p4,p5,p6).
EAR_EYE_A = (33, 160, 158, 133, 153, 144)   # appears on the image's left side
EAR_EYE_B = (362, 385, 387, 263, 373, 380)  # appears on the image's right side
# Eye corners that MediaPipe uses to place the iris crops; eye B's crop is mirrored.
CORNERS_EYE_A = (33, 133)
CORNERS_EYE_B = (362, 263)
EAR_CLOSED_BELOW = 0.2

NUM_EYE_CONTOUR = 71  # iris model output 1: eye contour + brows, (x, y, z) each
NUM_IRIS = 5          # iris model output 2: iris centre then 4 rim points
CONTOUR_CORNERS = (0, 8)  # contour points 0 and 8 are the eye corners (mesh 33 and 133)
GAZE_LABELS = ("left", "center", "right")
GAZE_LOW, GAZE_HIGH = 0.40, 0.60  # FP32 on our eye crops: median 0.45, 5-95% 0.32-0.64


def as_points(flat: np.ndarray, count: int) -> np.ndarray:
    """Reshape stacked raw outputs (N, ...) holding count*3 values into (N, count, 3)."""
    arr = np.asarray(flat, dtype=np.float64)
    if arr.size != arr.shape[0] * count * 3:
        raise ValueError(f"expected {count}x3 values per sample, got shape {arr.shape}")
    return arr.reshape(arr.shape[0], count, 3)


def eye_aspect_ratio(landmarks: np.ndarray, eye: tuple[int, ...] = EAR_EYE_A) -> np.ndarray:
    """EAR = (|p2-p6| + |p3-p5|) / (2 |p1-p4|) per sample, for (N, 468, 2+) landmarks."""
    p = np.asarray(landmarks, dtype=np.float64)[:, list(eye), :2]
    dist = lambda i, j: np.linalg.norm(p[:, i] - p[:, j], axis=-1)  # noqa: E731
    return (dist(1, 5) + dist(2, 4)) / np.maximum(2.0 * dist(0, 3), 1e-9)


def eyes_open(landmarks: np.ndarray, threshold: float = EAR_CLOSED_BELOW) -> np.ndarray:
    """True where the mean EAR of both eyes is at or above the closed-eye threshold."""
    ear = (eye_aspect_ratio(landmarks, EAR_EYE_A) + eye_aspect_ratio(landmarks, EAR_EYE_B)) / 2
    return ear >= threshold


def gaze_ratio(eye_contour: np.ndarray, iris: np.ndarray) -> np.ndarray:
    """Iris centre position along the corner-to-corner axis: 0 at the crop-left corner, 1 right.

    Uses the corners' x order rather than their index, so a mirrored crop reads the same way.
    """
    c = np.asarray(eye_contour, dtype=np.float64)[:, list(CONTOUR_CORNERS), :2]
    centre = np.asarray(iris, dtype=np.float64)[:, 0, :2]
    swap = c[:, 0, 0] > c[:, 1, 0]
    left = np.where(swap[:, None], c[:, 1], c[:, 0])
    right = np.where(swap[:, None], c[:, 0], c[:, 1])
    axis = right - left
    return ((centre - left) * axis).sum(axis=1) / np.maximum((axis * axis).sum(axis=1), 1e-9)


def gaze_direction(ratio: np.ndarray, low: float = GAZE_LOW, high: float = GAZE_HIGH) -> np.ndarray:
    """0 = left, 1 = center, 2 = right (in crop coordinates; see GAZE_LABELS)."""
    r = np.asarray(ratio, dtype=np.float64)
    return np.where(r < low, 0, np.where(r > high, 2, 1))
