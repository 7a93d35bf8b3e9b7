"""ORT's documented default flows, for the side-by-side column of ZOO.md: plain
``quantize_dynamic(model, out)`` and ``quant_pre_process`` + ``quantize_static`` (QDQ, every
default) calibrated on the same calibration file and sample limit edgequant used. Nothing of
edgequant is used here: the npz samples are fed as ORT's examples do."""

from __future__ import annotations

import tempfile
from pathlib import Path

import contextlib
import logging
import os

import numpy as np


@contextlib.contextmanager
def _quiet_in(folder: Path):
    """ORT's quantizer logs on the root logger and its shape inference writes into the cwd."""
    root = logging.getLogger()
    level, cwd = root.level, os.getcwd()
    root.setLevel(logging.ERROR)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        root.setLevel(level)


class NpzReader:
    """onnxruntime CalibrationDataReader over an npz (one array per input, first axis =
    samples; a batch dim of 1 added where the sample lacks it; ``labels`` ignored)."""

    def __init__(self, path: str, model: Path, limit: int | None) -> None:
        import onnxruntime as ort

        ranks = {i.name: len(i.shape) for i in
                 ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()}
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ranks}
        n = len(next(iter(arrays.values())))
        n = min(n, limit) if limit else n
        self._items = iter([{k: np.asarray(v[i] if v[i].ndim == ranks[k] else v[i][None]) for k, v in arrays.items()}
                            for i in range(n)])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def ort_dynamic(model: Path, out: Path) -> str | None:
    """``quantize_dynamic`` with its defaults; returns an error line or None."""
    from onnxruntime.quantization import quantize_dynamic

    try:
        with _quiet_in(out.parent):
            quantize_dynamic(str(model), str(out))
    except Exception as exc:  # noqa: BLE001 - the flow's failure is the result
        return _first_line(exc)
    return None


def ort_static(model: Path, out: Path, calib: str, limit: int | None) -> str | None:
    """``quant_pre_process`` (retried without symbolic shapes, as ORT's docs advise) then
    ``quantize_static`` with its defaults (QDQ, S8S8 per-tensor, MinMax); an error line or None."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = NpzReader(calib, model, limit)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            with _quiet_in(Path(tmp)):
                try:
                    quant_pre_process(str(model), str(pre))
                except Exception:  # noqa: BLE001 - ORT's documented fallback
                    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(out), reader)
        except Exception as exc:  # noqa: BLE001
            return _first_line(exc)
    return None
