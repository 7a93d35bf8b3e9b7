"""Crop geometry and BlazeFace decoding: the maths both the datasets and the pipeline rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgequant.dms import blazeface, geometry
from edgequant.dms.geometry import Roi


def test_point_mapping_round_trips_with_rotation_and_flip() -> None:
    roi = Roi(cx=40.0, cy=30.0, size=20.0, angle=0.3, flip=True)
    pts = np.array([[0.0, 0.0], [64.0, 64.0], [10.0, 50.0]])
    np.testing.assert_allclose(geometry.to_crop(geometry.to_image(pts, roi, 64), roi, 64), pts,
                               atol=1e-9)
    centre = geometry.to_image(np.array([[32.0, 32.0]]), roi, 64)
    np.testing.assert_allclose(centre, [[40.0, 30.0]])


def test_crop_identity_mirror_and_rotation() -> None:
    img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    whole = Roi(cx=4.0, cy=4.0, size=8.0)
    np.testing.assert_allclose(geometry.crop(img, whole, 8), img, atol=1e-6)
    np.testing.assert_allclose(geometry.crop(img, Roi(4.0, 4.0, 8.0, flip=True), 8),
                               img[:, ::-1], atol=1e-6)
    # a quarter turn: crop x runs down the image, crop y runs right-to-left
    np.testing.assert_allclose(geometry.crop(img, Roi(4.0, 4.0, 8.0, angle=math.pi / 2), 8),
                               img.transpose(1, 0, 2)[::-1], atol=1e-5)


def test_crop_replicates_borders() -> None:
    img = np.arange(4, dtype=np.float32).reshape(1, 4, 1).repeat(2, axis=0)
    out = geometry.crop(img, Roi(cx=2.0, cy=1.0, size=8.0), 8)
    assert out[0, 0, 0] == 0.0 and out[0, -1, 0] == 3.0


def test_anchors_match_mediapipe_layout() -> None:
    a = blazeface.anchors()
    assert a.shape == (896, 2)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[1], a[0])                # 2 anchors per 16x16 cell
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8])  # then 6 per 8x8 cell
    np.testing.assert_allclose(a[517], a[512])


def test_decode_places_box_and_keypoints_at_anchor() -> None:
    reg = np.zeros((896, 16), np.float32)
    reg[600, 2:4] = 32.0             # 32 px wide and high
    reg[600, 4:6] = (-8.0, -4.0)     # right eye keypoint offset
    reg[601, 2:4] = 30.0             # overlapping weaker box is merged in (weighted)
    reg[601, 4:6] = (-8.0, -4.0)
    logits = np.full((896, 1), -20.0, np.float32)
    logits[600], logits[601] = 5.0, 1.0
    dets = blazeface.decode(reg, logits)
    assert len(dets) == 1
    cx, cy = blazeface.anchors()[600]
    d = dets[0]
    assert d.score == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert d.xmin + d.width / 2 == pytest.approx(cx, abs=1e-6)
    assert 30 / 128 < d.width < 32 / 128
    assert d.keypoints[0, 0] == pytest.approx(cx - 8 / 128, abs=1e-6)


def test_face_roi_levels_the_eyes_and_scales() -> None:
    kp = np.zeros((6, 2), np.float32)
    kp[0], kp[1] = (40, 50), (60, 70)   # eye line at 45 degrees
    det = blazeface.Detection(0.9, xmin=30, ymin=40, width=40, height=20, keypoints=kp)
    roi = geometry.face_roi(det)
    assert roi.angle == pytest.approx(math.pi / 4)
    assert (roi.cx, roi.cy, roi.size) == pytest.approx((50, 50, 60))
