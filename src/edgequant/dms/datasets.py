"""Calibration and evaluation sets for the three DMS models, from images scikit-image ships.

Sources (no download): ``skimage.data.lfw_subset()`` (200 grey 25x25 crops, 100 faces then
100 non-faces) and ``skimage.data.astronaut()`` (one colour 512x512 portrait).
- Detector: every lfw image resized to 128x128 RGB in [-1, 1]; even indices calibrate, odd
  indices evaluate (50 faces + 50 non-faces each, with ``labels``); the astronaut frame
  is added to calibration only (one real colour frame).
- Face landmarks: lfw faces cropped as MediaPipe does (FP32 detection -> 1.5x rotated square
  -> 192x192 in [0, 1]), plus jittered copies (shift, scale, rotation, brightness) for
  variety; even faces calibrate, odd faces evaluate; astronaut crops are evaluation only,
  so no identity is in both sets.
- Iris: both eyes of every face crop (corners from the FP32 face-landmark run, 2.3x square,
  eye B mirrored) -> 64x64 in [0, 1], cut from the same source image.
Arrays are stored per model input name as (N, 3, S, S) float32; the model input is
(1, 3, S, S), so a loader feeds each sample with the batch axis of 1 re-added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from ..errors import EdgequantError
from . import geometry, stages
from .geometry import Roi
from .models import DETECTOR, FACE_LANDMARK, IRIS_LANDMARK

DATASET_VERSION = 1  # bump when the recipe changes: cached sets are then rebuilt
SEED = 4
LFW_VARIANTS = 2        # per lfw face: the exact crop + 1 jittered copy
ASTRONAUT_VARIANTS = 8  # the exact crop + 7 jittered copies (evaluation only)
MIN_FACE_PRESENCE = 0.5  # drop crops the FP32 landmark model says hold no face
SPLITS = ("calibration", "evaluation")


@dataclass(frozen=True)
class Source:
    """One face sample to crop: its image, region, brightness gain and split."""

    split: str
    origin: str
    image: np.ndarray
    roi: Roi
    gain: float = 1.0


def _skimage_data():  # type: ignore[no-untyped-def]
    try:
        from skimage import data
    except ImportError:
        raise EdgequantError("scikit-image is not installed (it ships the DMS images): "
                             "pip install scikit-image==0.26.0") from None
    return data


def lfw() -> tuple[np.ndarray, np.ndarray]:
    """(200, 25, 25) float images in [0, 1] and labels (1 face, 0 non-face)."""
    data = _skimage_data()

    images = np.asarray(data.lfw_subset(), dtype=np.float32)
    labels = np.r_[np.ones(100, np.int64), np.zeros(len(images) - 100, np.int64)]
    return images, labels


def astronaut() -> np.ndarray:
    data = _skimage_data()
    return stages.to_rgb01(data.astronaut())


def split_of(index: int) -> str:
    """Even indices calibrate, odd indices evaluate (stratified: faces and non-faces alike)."""
    return SPLITS[index % 2]


def detector_sets(images: np.ndarray, labels: np.ndarray, frame: np.ndarray,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (inputs (N, 3, 128, 128), labels (N,)); calibration adds the astronaut frame."""
    out: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    for i, img in enumerate(images):
        rgb = stages.to_rgb01(img)
        roi = geometry.letterbox_roi(rgb.shape[1], rgb.shape[0])
        out[split_of(i)][0].append(stages.model_input(rgb, roi, DETECTOR))
        out[split_of(i)][1].append(int(labels[i]))
    out["calibration"][0].append(stages.model_input(
        frame, geometry.letterbox_roi(frame.shape[1], frame.shape[0]), DETECTOR))
    out["calibration"][1].append(1)
    return {s: (np.stack(x), np.asarray(y, np.int64)) for s, (x, y) in out.items()}


def jitter(roi: Roi, rng: np.random.Generator) -> tuple[Roi, float]:
    """A nearby crop: shift +-6% of the side, scale 0.9-1.1x, rotate +-12 deg, gain 0.75-1.25."""
    dx, dy = rng.uniform(-0.06, 0.06, size=2) * roi.size
    return (replace(roi, cx=roi.cx + dx, cy=roi.cy + dy, size=roi.size * rng.uniform(0.9, 1.1),
                    angle=roi.angle + math.radians(rng.uniform(-12, 12))),
            float(rng.uniform(0.75, 1.25)))


def face_sources(detector: ort.InferenceSession, images: np.ndarray, labels: np.ndarray,
                 frame: np.ndarray) -> list[Source]:
    """Face crops to take, MediaPipe style, from lfw faces and the astronaut frame."""
    rng = np.random.default_rng(SEED)
    found: list[Source] = []

    def add(split: str, origin: str, image: np.ndarray, variants: int) -> None:
        dets = stages.detect(detector, image)
        if dets:
            base = geometry.face_roi(dets[0])
        else:  # the detector missed it: fall back to the centre, 1.5x the frame
            h, w = image.shape[:2]
            base = Roi(cx=w / 2, cy=h / 2, size=1.5 * max(h, w))
        found.append(Source(split, origin, image, base))
        for _ in range(variants - 1):
            roi, gain = jitter(base, rng)
            found.append(Source(split, origin, image, roi, gain))

    for i in np.flatnonzero(labels == 1):
        add(split_of(int(i)), f"lfw[{i}]", stages.to_rgb01(images[i]), LFW_VARIANTS)
    add("evaluation", "astronaut", frame, ASTRONAUT_VARIANTS)
    return found


def landmark_sets(sessions: stages.Sessions, sources: list[Source]) -> dict[str, dict]:
    """split -> {"face": (N,3,192,192), "eyes": (2N',3,64,64), "dropped": int}."""
    out = {s: {"face": [], "eyes": [], "origins": [], "dropped": 0} for s in SPLITS}
    for src in sources:
        image = np.clip(src.image * src.gain, 0.0, 1.0)
        face_in = stages.model_input(image, src.roi, FACE_LANDMARK)
        res = stages.run(sessions.face_landmark, face_in)
        presence = 1.0 / (1.0 + math.exp(-float(res["conv2d_31"].ravel()[0])))
        if presence < MIN_FACE_PRESENCE:
            out[src.split]["dropped"] += 1
            continue
        mesh = geometry.to_image(stages.face_mesh(res), src.roi, FACE_LANDMARK.size)
        out[src.split]["face"].append(face_in)
        out[src.split]["origins"].append(src.origin)
        for eye in stages.eye_rois(mesh):
            out[src.split]["eyes"].append(stages.model_input(image, eye, IRIS_LANDMARK))
    for part in out.values():
        part["face"] = np.stack(part["face"])
        part["eyes"] = np.stack(part["eyes"])
    return out
