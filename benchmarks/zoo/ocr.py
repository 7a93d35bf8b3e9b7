"""PP-OCR (v4 detection and recognition, v2 direction classifier) from the rapidocr-onnxruntime
wheel, fed text rendered from docstring sentences with Pillow's bundled font and scikit-image's
page/text scans. Preprocessing as RapidOCR does it: x / 255, mean 0.5, std 0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from . import inputs
from .sources import extract, save_npz
from .spec import Sizes, ZooModel

_MODELS = "rapidocr_onnxruntime/models/"
DET = _MODELS + "ch_PP-OCRv4_det_infer.onnx"
REC = _MODELS + "ch_PP-OCRv4_rec_infer.onnx"
CLS = _MODELS + "ch_ppocr_mobile_v2.0_cls_infer.onnx"
REC_H, REC_W = 48, 320
CLS_H, CLS_W = 48, 192
DET_SIDE = 320


def _norm(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW, (x / 255 - 0.5) / 0.5."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def _words(n_lines: int, offset: int, seed: int, lo: int = 2, hi: int = 5) -> list[str]:
    """Short lines (``lo``..``hi`` words) cut from docstring sentences."""
    rng = np.random.default_rng(seed)
    sents = inputs.sentences()
    out = []
    i = offset
    while len(out) < n_lines:
        words = sents[i % len(sents)].split()
        k = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, max(1, len(words) - k + 1)))
        out.append(" ".join(words[start:start + k]).strip(".,;:"))
        i += 1
    return out


def det_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """320x320 pages of rendered docstring lines (various sizes and colours), plus crops of
    scikit-image's page and text scans."""
    sha = extract(wheel, DET, folder / "model.onnx")
    sents = inputs.sentences()
    import skimage.data as data

    scans = [np.repeat(np.asarray(data.page())[..., None], 3, 2), np.repeat(np.asarray(data.text())[..., None], 3, 2)]

    def split(n: int, seed: int, offset: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        pages = []
        for i in range(n):
            if i % 4 == 3:
                pages.append(inputs.crops(scans, 1, DET_SIDE, seed + i)[0])
            else:
                lines = sents[(offset + 9 * i) % len(sents):][:16]
                pages.append(inputs.render_page(lines, DET_SIDE, int(rng.integers(12, 24)), seed + i))
        return _norm(np.stack(pages))

    return {"member": DET, "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", {"x": split(sizes.calib, 21, 0)}),
            "eval": save_npz(folder / "eval.npz", {"x": split(sizes.eval, 22, 700)})}


def rec_dictionary(model_path: Path) -> list[str]:
    """PP-OCR's character list from the model's metadata (class i + 1; 0 is the CTC blank;
    the last class is the space PaddleOCR appends)."""
    m = onnx.load(str(model_path), load_external_data=False)
    chars = next(p.value for p in m.metadata_props if p.key == "character").splitlines()
    return chars + [" "]


def rec_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """48x320 text lines (2-5 words of docstring sentences); labels = the rendered text as
    PP-OCR class ids (padded with -1), for ctc_agreement's exact-line accuracy."""
    sha = extract(wheel, REC, folder / "model.onnx")
    index = {c: i + 1 for i, c in enumerate(rec_dictionary(folder / "model.onnx"))}

    def split(n: int, seed: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        texts = [t for t in _words(n * 2, offset, seed) if all(c in index for c in t)][:n]
        imgs = np.stack([inputs.render_line(t, REC_H, REC_W, size=int(22 + (i % 3) * 6))
                         for i, t in enumerate(texts)])
        ids = [[index[c] for c in t] for t in texts]
        labels = np.full((len(ids), max(map(len, ids))), -1, np.int64)
        for row, seq in zip(labels, ids, strict=True):
            row[:len(seq)] = seq
        return _norm(imgs), labels

    cx, _ = split(sizes.calib, 31, 0)
    ex, ey = split(sizes.eval, 32, 900)
    return {"member": REC, "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", {"x": cx}),
            "eval": save_npz(folder / "eval.npz", {"x": ex, "labels": ey})}


def cls_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """48x192 text lines, half of them rotated 180 degrees; labels: 0 upright, 1 rotated."""
    sha = extract(wheel, CLS, folder / "model.onnx")

    def split(n: int, seed: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        texts = _words(n, offset, seed, 1, 4)
        y = rng.integers(0, 2, n)
        imgs = np.stack([np.rot90(inputs.render_line(t, CLS_H, CLS_W, size=int(22 + (i % 3) * 6)), 2 * k)
                         for i, (t, k) in enumerate(zip(texts, y, strict=True))])
        return _norm(imgs), y.astype(np.int64)

    cx, _ = split(sizes.calib, 41, 100)
    ex, ey = split(sizes.eval, 42, 1100)
    return {"member": CLS, "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", {"x": cx}),
            "eval": save_npz(folder / "eval.npz", {"x": ex, "labels": ey})}
