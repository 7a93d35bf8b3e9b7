"""DMS metric functions on synthetic arrays: each test breaks if its formula breaks."""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.dms import decisions, metrics
from edgequant.errors import EdgequantError
from edgequant.metrics import MetricResult


def _eye(mesh: np.ndarray, idx: tuple[int, ...], x0: float, half_open: float) -> None:
    """Put one eye's six EAR points: corners 10 px apart, lids +-half_open at 3 and 7 px."""
    p1, p2, p3, p4, p5, p6 = idx
    mesh[p1, :2], mesh[p4, :2] = (x0, 50), (x0 + 10, 50)
    mesh[p2, :2], mesh[p6, :2] = (x0 + 3, 50 - half_open), (x0 + 3, 50 + half_open)
    mesh[p3, :2], mesh[p5, :2] = (x0 + 7, 50 - half_open), (x0 + 7, 50 + half_open)


def face_outputs(half_open: list[float]) -> dict[str, np.ndarray]:
    """Face-landmark outputs (N, 1404, 1, 1) with both eyes opened by half_open[i] px."""
    mesh = np.zeros((len(half_open), decisions.NUM_FACE_LANDMARKS, 3), np.float32)
    for i, h in enumerate(half_open):
        _eye(mesh[i], decisions.EAR_EYE_A, 60, h)
        _eye(mesh[i], decisions.EAR_EYE_B, 120, h)
    return {"conv2d_21": mesh.reshape(len(half_open), -1, 1, 1),
            "conv2d_31": np.zeros((len(half_open), 1, 1, 1), np.float32)}


def iris_outputs(iris_x: list[float], mirrored: bool = False) -> dict[str, np.ndarray]:
    """Iris outputs with corners at x=10 and x=50 (y=32) and the iris centre at iris_x[i]."""
    n = len(iris_x)
    contour = np.zeros((n, decisions.NUM_EYE_CONTOUR, 3), np.float32)
    a, b = decisions.CONTOUR_CORNERS
    contour[:, a, :2], contour[:, b, :2] = ((50, 32), (10, 32)) if mirrored else ((10, 32), (50, 32))
    iris = np.zeros((n, decisions.NUM_IRIS, 3), np.float32)
    iris[:, 0, 0], iris[:, 0, 1] = iris_x, 32
    return {"output_eyes_contours_and_brows": contour.reshape(n, -1),
            "output_iris": iris.reshape(n, -1)}


def test_eye_aspect_ratio_formula() -> None:
    mesh = face_outputs([2.0, 0.5])["conv2d_21"].reshape(2, -1, 3)
    # (|p2-p6| + |p3-p5|) / (2 |p1-p4|) = (4 + 4) / 20 and (1 + 1) / 20
    np.testing.assert_allclose(decisions.eye_aspect_ratio(mesh), [0.4, 0.1])
    np.testing.assert_allclose(decisions.eye_aspect_ratio(mesh, decisions.EAR_EYE_B), [0.4, 0.1])
    assert decisions.eyes_open(mesh).tolist() == [True, False]


def test_eye_state_agreement_counts_flipped_decisions() -> None:
    ref = face_outputs([2.0, 2.0, 0.5, 0.5])
    out = face_outputs([2.0, 0.5, 0.5, 0.5])  # sample 1: open -> closed
    res = metrics.eye_state_agreement(out, None, ref)
    assert isinstance(res, MetricResult) and res.higher_is_better
    assert res.value == pytest.approx(0.75)
    assert res.details["reference_open_rate"] == pytest.approx(0.5)


def test_gaze_ratio_and_direction() -> None:
    o = iris_outputs([30.0, 14.0, 46.0, 26.0])
    contour = decisions.as_points(o["output_eyes_contours_and_brows"], decisions.NUM_EYE_CONTOUR)
    iris = decisions.as_points(o["output_iris"], decisions.NUM_IRIS)
    ratio = decisions.gaze_ratio(contour, iris)
    np.testing.assert_allclose(ratio, [0.5, 0.1, 0.9, 0.4])
    assert decisions.gaze_direction(ratio).tolist() == [1, 0, 2, 1]  # 0.4 is still centre
    # the corners' x order, not their index, decides left: a mirrored crop reads the same
    m = iris_outputs([30.0, 14.0, 46.0, 26.0], mirrored=True)
    np.testing.assert_allclose(decisions.gaze_ratio(
        decisions.as_points(m["output_eyes_contours_and_brows"], decisions.NUM_EYE_CONTOUR),
        decisions.as_points(m["output_iris"], decisions.NUM_IRIS)), ratio)


def test_gaze_agreement() -> None:
    ref = iris_outputs([30.0, 14.0, 46.0, 30.0])
    out = iris_outputs([31.0, 14.0, 30.0, 12.0])  # last two change direction
    res = metrics.gaze_agreement(out, None, ref)
    assert res.value == pytest.approx(0.5)
    assert res.details["reference_counts"] == {"left": 1, "center": 2, "right": 1}


def test_detector_accuracy_thresholds_the_best_anchor() -> None:
    logits = np.full((4, 896, 1), -10.0, np.float32)
    logits[0, 17, 0] = 3.0    # face, found
    logits[1, 800, 0] = 0.0   # score exactly 0.5: not a face (strictly greater)
    logits[3, 5, 0] = 150.0   # non-face scored as face (clipped logit still counts)
    res = metrics.detector_accuracy({"regressors": np.zeros((4, 896, 16)),
                                     "classificators": logits}, np.array([1, 1, 0, 0]), None)
    assert res.name == "face_detection_accuracy" and res.higher_is_better
    assert res.value == pytest.approx(0.5)
    assert res.details["true_positive_rate"] == pytest.approx(0.5)
    assert res.details["false_positive_rate"] == pytest.approx(0.5)
    # against an FP32 reference that got sample 1 right: one sample lost (the budget's paired interval)
    ref = logits.copy()
    ref[1, 800, 0] = 2.0
    paired = metrics.detector_accuracy({"classificators": logits}, np.array([1, 1, 0, 0]),
                                       {"classificators": ref}).details["paired"]
    assert paired == {"both": 2, "lost": 1, "gained": 0, "neither": 1}


def test_detector_accuracy_needs_labels_and_matching_count() -> None:
    out = {"classificators": np.zeros((2, 896, 1), np.float32)}
    with pytest.raises(EdgequantError, match="labels"):
        metrics.detector_accuracy(out, None, None)
    with pytest.raises(EdgequantError, match="3 labels for 2 samples"):
        metrics.detector_accuracy(out, np.array([1, 0, 1]), None)


def test_face_landmark_displacement_in_pixels() -> None:
    ref = face_outputs([2.0, 2.0])
    mesh = ref["conv2d_21"].reshape(2, -1, 3).copy()
    mesh[1, 7, :2] += (3.0, 4.0)   # one point moved by 5 px
    mesh[0, :, 2] += 100.0         # depth is ignored
    res = metrics.face_landmark_displacement({"conv2d_21": mesh.reshape(2, -1, 1, 1)}, None, ref)
    assert not res.higher_is_better
    assert res.value == pytest.approx(5.0 / (2 * 468))
    assert res.details["max_px"] == pytest.approx(5.0)
    assert res.details["eye_state_agreement"] == 1.0


def test_iris_displacement_covers_contour_and_iris() -> None:
    ref = iris_outputs([30.0, 30.0])
    out = iris_outputs([30.0, 34.0])  # iris centre of sample 1 moves 4 px (gaze unchanged)
    res = metrics.iris_landmark_displacement(out, None, ref)
    assert res.value == pytest.approx(4.0 / (2 * 76))
    assert res.details["max_px"] == pytest.approx(4.0)
    assert res.details["iris_centre_mean_px"] == pytest.approx(2.0)
    assert res.details["gaze_agreement"] == 1.0


def test_outputs_found_by_size_when_renamed() -> None:
    ref = iris_outputs([30.0])
    renamed = {"a": ref["output_eyes_contours_and_brows"], "b": ref["output_iris"]}
    assert metrics.iris_landmark_displacement(renamed, None, ref).value == 0.0


def test_reference_required() -> None:
    with pytest.raises(EdgequantError, match="reference"):
        metrics.face_landmark_displacement(face_outputs([2.0]), None, None)
    with pytest.raises(EdgequantError, match="gaze_agreement: need output 'output_eyes_contours_and_brows'"):
        metrics.gaze_agreement({"x": np.zeros((1, 4))}, None, iris_outputs([30.0]))
