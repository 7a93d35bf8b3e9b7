"""One frame through the three models: each stage's input preparation and output mapping.

Images are float32 (H, W, 3) RGB in [0, 1]; model inputs are (3, S, S) float32 (NCHW without
the batch axis) in the model's value range. Shared by the dataset builder and the frame
pipeline so both feed the models exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from . import blazeface, decisions, geometry
from .geometry import Roi
from .models import DETECTOR, ModelSpec


def to_rgb01(image: np.ndarray) -> np.ndarray:
    """uint8 or float, grey or RGB(A) -> float32 (H, W, 3) in [0, 1]."""
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.clip(img[:, :, :3], 0.0, 1.0)


def model_input(image: np.ndarray, roi: Roi, spec: ModelSpec) -> np.ndarray:
    """Crop ``roi`` to the model's side, scale to its value range, HWC -> CHW."""
    lo, hi = spec.value_range
    patch = geometry.crop(image, roi, spec.size) * (hi - lo) + lo
    return np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32)


def run(session: ort.InferenceSession, sample: np.ndarray) -> dict[str, np.ndarray]:
    """Run one (C, H, W) sample with a batch axis of 1 added; outputs keep their batch axis."""
    feed = {session.get_inputs()[0].name: sample[None]}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def detect(session: ort.InferenceSession, image: np.ndarray,
           min_score: float = blazeface.MIN_SCORE) -> list[blazeface.Detection]:
    """Faces in image pixels, best first (whole frame letterboxed to 128x128)."""
    roi = geometry.letterbox_roi(image.shape[1], image.shape[0])
    out = run(session, model_input(image, roi, DETECTOR))
    dets = blazeface.decode(out["regressors"][0], out["classificators"][0], min_score)
    return [geometry.detection_to_image(d, roi) for d in dets]


def face_mesh(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """(468, 3) mesh in 192x192 crop pixels from one face-landmark run."""
    return decisions.as_points(outputs["conv2d_21"].reshape(1, -1), decisions.NUM_FACE_LANDMARKS)[0]


def eye_rois(mesh_in_image: np.ndarray) -> tuple[Roi, Roi]:
    """Iris crops for both eyes from image-space mesh points; eye B is mirrored as in MediaPipe."""
    a0, a1 = decisions.CORNERS_EYE_A
    b0, b1 = decisions.CORNERS_EYE_B
    return (geometry.eye_roi(mesh_in_image[a0], mesh_in_image[a1], flip=False),
            geometry.eye_roi(mesh_in_image[b0], mesh_in_image[b1], flip=True))


def iris_points(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(71, 3) eye contour and (5, 3) iris points in 64x64 crop pixels from one iris run."""
    contour = decisions.as_points(outputs["output_eyes_contours_and_brows"].reshape(1, -1),
                                  decisions.NUM_EYE_CONTOUR)[0]
    iris = decisions.as_points(outputs["output_iris"].reshape(1, -1), decisions.NUM_IRIS)[0]
    return contour, iris


@dataclass(frozen=True)
class Sessions:
    """The three models loaded for CPU inference."""

    detector: ort.InferenceSession
    face_landmark: ort.InferenceSession
    iris_landmark: ort.InferenceSession


def load_sessions(detector: str, face_landmark: str, iris_landmark: str,
                  threads: int = 0) -> Sessions:
    """ONNX Runtime CPU sessions (threads=0 lets ORT choose)."""
    from ..devices import local_cpu
    from ..measure.session import SessionConfig

    device = local_cpu(SessionConfig(intra_op_threads=threads))
    return Sessions(device.open(detector), device.open(face_landmark), device.open(iris_landmark))

