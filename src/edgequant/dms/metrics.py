"""DMS task metrics, pluggable as ``edgequant eval --metric edgequant.dms.metrics:NAME``.

Each function takes ``(outputs, labels, reference)``: model outputs stacked over samples
(first axis = samples), optional labels, optional FP32 reference outputs of the same
shapes, and returns a :class:`edgequant.metrics.MetricResult`. Landmark metrics compare
with the FP32 reference because the datasets have no human landmark annotations.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgequantError
from ..metrics import MetricResult
from . import blazeface, decisions

Outputs = dict[str, np.ndarray]

DETECTOR_SCORES = ("classificators", blazeface.NUM_ANCHORS)
FACE_MESH = ("conv2d_21", decisions.NUM_FACE_LANDMARKS * 3)
EYE_CONTOUR = ("output_eyes_contours_and_brows", decisions.NUM_EYE_CONTOUR * 3)
IRIS = ("output_iris", decisions.NUM_IRIS * 3)
FACE_CROP_PX, EYE_CROP_PX = 192, 64


def _pick(outputs: Outputs, wanted: tuple[str, int], what: str) -> np.ndarray:
    """The output named ``wanted[0]``, else the only one with ``wanted[1]`` values per sample."""
    name, per_sample = wanted
    if name in outputs:
        return np.asarray(outputs[name])
    hits = [k for k, v in outputs.items() if np.asarray(v)[:1].size == per_sample]
    if len(hits) != 1:
        raise EdgequantError(f"{what}: need output {name!r} ({per_sample} values per sample); "
                             f"got {sorted(outputs)}")
    return np.asarray(outputs[hits[0]])


def _need_reference(reference: Outputs | None, metric: str) -> Outputs:
    if reference is None:
        raise EdgequantError(f"metric {metric}: needs the FP32 reference outputs (--reference)")
    return reference


def _displacement(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-point x/y distance (N, K) between two (N, K, 3) landmark arrays."""
    if out.shape != ref.shape:
        raise EdgequantError(f"landmark shapes differ: {out.shape} vs reference {ref.shape}")
    return np.linalg.norm(out[..., :2] - ref[..., :2], axis=-1)


def _paired(hits: np.ndarray, ref_hits: np.ndarray) -> dict[str, int]:
    """Per-sample outcomes against FP32's: the budget's paired 95% interval of the drop."""
    return {"both": int(np.sum(hits & ref_hits)), "lost": int(np.sum(ref_hits & ~hits)),
            "gained": int(np.sum(hits & ~ref_hits)), "neither": int(np.sum(~hits & ~ref_hits))}


def detector_accuracy(outputs: Outputs, labels: np.ndarray | None,
                      reference: Outputs | None = None) -> MetricResult:
    """Face / non-face accuracy: a sample is a face when its best anchor scores > 0.5."""
    if labels is None:
        raise EdgequantError("metric detector_accuracy: the eval data needs a 'labels' array")
    best = blazeface.max_score(_pick(outputs, DETECTOR_SCORES, "detector_accuracy"))
    y = np.asarray(labels).reshape(-1).astype(bool)
    if y.shape[0] != best.shape[0]:
        raise EdgequantError(f"metric detector_accuracy: {y.shape[0]} labels for "
                             f"{best.shape[0]} samples")
    pred = best > blazeface.MIN_SCORE
    details: dict = {"samples": int(y.size), "faces": int(y.sum()),
                     "true_positive_rate": float(pred[y].mean()) if y.any() else None,
                     "false_positive_rate": float(pred[~y].mean()) if (~y).any() else None}
    if reference is not None:
        ref_pred = blazeface.max_score(_pick(reference, DETECTOR_SCORES, "reference")) > 0.5
        details["agreement_with_reference"] = float((pred == ref_pred).mean())
        details["paired"] = _paired(pred == y, ref_pred == y)
    return MetricResult("face_detection_accuracy", float((pred == y).mean()), True, details)


def eye_state_agreement(outputs: Outputs, labels: np.ndarray | None,
                        reference: Outputs | None) -> MetricResult:
    """Share of samples whose eye open/closed decision (EAR) matches the FP32 one."""
    ref = _need_reference(reference, "eye_state_agreement")
    mesh = decisions.as_points(_pick(outputs, FACE_MESH, "eye_state_agreement"),
                               decisions.NUM_FACE_LANDMARKS)
    ref_mesh = decisions.as_points(_pick(ref, FACE_MESH, "reference"), decisions.NUM_FACE_LANDMARKS)
    got, want = decisions.eyes_open(mesh), decisions.eyes_open(ref_mesh)
    return MetricResult("eye_state_agreement", float((got == want).mean()), True,
                        {"reference_open_rate": float(want.mean()), "samples": int(want.size),
                         "paired": _paired(got == want, np.ones(want.shape, bool)),
                         "ear_threshold": decisions.EAR_CLOSED_BELOW})


def gaze_agreement(outputs: Outputs, labels: np.ndarray | None,
                   reference: Outputs | None) -> MetricResult:
    """Share of eye crops whose left/center/right gaze decision matches the FP32 one."""
    ref = _need_reference(reference, "gaze_agreement")

    def directions(o: Outputs, what: str) -> np.ndarray:
        contour = decisions.as_points(_pick(o, EYE_CONTOUR, what), decisions.NUM_EYE_CONTOUR)
        iris = decisions.as_points(_pick(o, IRIS, what), decisions.NUM_IRIS)
        return decisions.gaze_direction(decisions.gaze_ratio(contour, iris))

    got, want = directions(outputs, "gaze_agreement"), directions(ref, "reference")
    counts = {label: int((want == i).sum()) for i, label in enumerate(decisions.GAZE_LABELS)}
    return MetricResult("gaze_agreement", float((got == want).mean()), True,
                        {"reference_counts": counts, "samples": int(want.size),
                         "paired": _paired(got == want, np.ones(want.shape, bool))})


def _displacement_result(name: str, disp: np.ndarray, crop_px: int, extra: dict) -> MetricResult:
    extra = {k: v for k, v in extra.items() if k != "paired"}   # pixels are no proportion: no paired interval
    details = {"max_px": float(disp.max()), "p95_px": float(np.percentile(disp, 95)),
               "crop_px": crop_px, "samples": int(disp.shape[0]), **extra}
    return MetricResult(name, float(disp.mean()), False, details)


def face_landmark_displacement(outputs: Outputs, labels: np.ndarray | None,
                               reference: Outputs | None) -> MetricResult:
    """Mean distance (pixels of the 192x192 crop) of the 468 mesh points from FP32's."""
    ref = _need_reference(reference, "face_landmark_displacement")
    mesh = decisions.as_points(_pick(outputs, FACE_MESH, "face_landmark_displacement"),
                               decisions.NUM_FACE_LANDMARKS)
    ref_mesh = decisions.as_points(_pick(ref, FACE_MESH, "reference"), decisions.NUM_FACE_LANDMARKS)
    eyes = eye_state_agreement(outputs, labels, reference)
    return _displacement_result("face_landmark_displacement_px", _displacement(mesh, ref_mesh),
                                FACE_CROP_PX, {"eye_state_agreement": eyes.value, **eyes.details})


def iris_landmark_displacement(outputs: Outputs, labels: np.ndarray | None,
                               reference: Outputs | None) -> MetricResult:
    """Mean distance (pixels of the 64x64 eye crop) of eye-contour and iris points from FP32's."""
    ref = _need_reference(reference, "iris_landmark_displacement")
    pts, ref_pts = [], []
    for wanted, count in ((EYE_CONTOUR, decisions.NUM_EYE_CONTOUR), (IRIS, decisions.NUM_IRIS)):
        pts.append(decisions.as_points(_pick(outputs, wanted, "iris_landmark_displacement"), count))
        ref_pts.append(decisions.as_points(_pick(ref, wanted, "reference"), count))
    disp = _displacement(np.concatenate(pts, axis=1), np.concatenate(ref_pts, axis=1))
    gaze = gaze_agreement(outputs, labels, reference)
    return _displacement_result("iris_landmark_displacement_px", disp, EYE_CROP_PX,
                                {"iris_centre_mean_px": float(disp[:, decisions.NUM_EYE_CONTOUR].mean()),
                                 "gaze_agreement": gaze.value, **gaze.details})
