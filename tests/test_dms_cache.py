"""Integration checks on the built DMS cache (``python -m edgequant.dms.build``).

Skipped when the cache is absent; set EDGEQUANT_DMS_CACHE to test another folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgequant.dms import build, frame_pipeline, metrics, stages, verify
from edgequant.dms.models import DETECTOR, MODELS

CACHE = Path(os.environ.get("EDGEQUANT_DMS_CACHE",
                            Path(__file__).resolve().parents[1] / ".cache" / "dms"))
pytestmark = pytest.mark.skipif(
    not (CACHE / "models" / "manifest.json").is_file() or not (CACHE / "data" / "manifest.json").is_file(),
    reason=f"{CACHE} is not built (python -m edgequant.dms.build --out {CACHE})")


@pytest.fixture(scope="module")
def manifests() -> tuple[dict, dict]:
    load = lambda p: json.loads((CACHE / p / "manifest.json").read_text())  # noqa: E731
    return load("models"), load("data")


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_models_match_manifest_and_tflite(manifests) -> None:
    models, _ = manifests
    for spec in MODELS:
        entry = models["models"][spec.name]
        assert build.sha256(CACHE / "models" / spec.onnx_name) == entry["sha256"]
        assert entry["opset"] >= 13
        assert entry["inputs"][0]["shape"] == [1, 3, spec.size, spec.size]
        v = entry["verification"]
        if verify.litert_version() is None:
            assert v["status"] in ("ok", "skipped")
            continue
        assert v["status"] == "ok" and v["samples"] > 50
        for name, diff in v["per_output"].items():  # float32 rounding only, relative to scale
            assert diff <= 1e-5 * max(v["output_scale"][name], 1.0), (spec.name, name, diff)


def test_npz_follow_the_data_source_contract(manifests) -> None:
    models, data = manifests
    for spec in MODELS:
        in_name = models["models"][spec.name]["inputs"][0]["name"]
        for split, entry in data["sets"][spec.name].items():
            arrays = _load(CACHE / "data" / entry["file"])
            expected = {in_name, "labels"} if spec is DETECTOR and split == "evaluation" else {in_name}
            assert set(arrays) == expected
            x = arrays[in_name]
            assert x.dtype == np.float32 and x.shape[1:] == (3, spec.size, spec.size)
            lo, hi = spec.value_range
            assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6 and x.std() > 0.05
    labels = _load(CACHE / "data" / data["sets"][DETECTOR.name]["evaluation"]["file"])["labels"]
    assert sorted(np.unique(labels).tolist()) == [0, 1] and labels.sum() == len(labels) // 2


def test_calibration_and_evaluation_are_disjoint(manifests) -> None:
    models, data = manifests
    for spec in MODELS:
        in_name = models["models"][spec.name]["inputs"][0]["name"]
        digests = {}
        for split, entry in data["sets"][spec.name].items():
            x = _load(CACHE / "data" / entry["file"])[in_name]
            digests[split] = {hashlib.sha1(s.tobytes()).hexdigest() for s in x}
        assert not digests["calibration"] & digests["evaluation"], spec.name


def test_fp32_detector_accuracy_on_lfw(manifests) -> None:
    models, data = manifests
    sess = stages.load_sessions(*(CACHE / "models" / s.onnx_name for s in MODELS)).detector
    ev = _load(CACHE / "data" / data["sets"][DETECTOR.name]["evaluation"]["file"])
    runs = [stages.run(sess, x) for x in ev["input"]]
    outputs = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
    result = metrics.detector_accuracy(outputs, ev["labels"], outputs)
    assert result.value >= 0.95
    assert result.value == pytest.approx(data["fp32"]["detector_accuracy"])
    assert result.details["agreement_with_reference"] == 1.0


def test_frame_pipeline_on_astronaut() -> None:
    from skimage import data as skdata

    paths = frame_pipeline.model_paths(CACHE)
    res = frame_pipeline.process_frame(*paths, skdata.astronaut())
    assert res.face_score is not None and res.face_score > 0.8
    assert res.eyes_open and res.gaze == "center" and len(res.eyes) == 2
    # irises sit inside the detected face, left eye left of right eye in the image
    assert 150 < res.eyes[0].iris_centre[0] < res.eyes[1].iris_centre[0] < 300
    sessions = stages.load_sessions(*map(str, paths))
    stats = frame_pipeline.time_frames({"fp32": sessions, "again": sessions},
                                       stages.to_rgb01(skdata.astronaut()), warmup=1, runs=3)
    assert stats["fp32"].runs == 3 and 0 < stats["fp32"].median_ms <= stats["fp32"].p95_ms


def test_rebuilding_models_is_deterministic_and_idempotent(tmp_path: Path, manifests) -> None:
    models, data = manifests
    wheel_dir = tmp_path / "wheel"
    wheel_dir.mkdir()
    (wheel_dir / models["source"]["wheel"]).symlink_to(CACHE / "wheel" / models["source"]["wheel"])
    first = build.build_models(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir()}
    second = build.build_models(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir()} == stamps
    for spec in MODELS:
        assert first["models"][spec.name]["sha256"] == second["models"][spec.name]["sha256"] \
            == models["models"][spec.name]["sha256"]
    assert build._data_fresh(CACHE / "data", data, {k: v["sha256"] for k, v in models["models"].items()})
