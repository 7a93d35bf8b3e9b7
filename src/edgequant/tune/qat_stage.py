"""tune's QAT step: a candidate whose model comes from :func:`edgequant.qat.train_qat` instead of a
post-training quantization job. Offered only where torch is installed (``edgequant[qat]``); runs in
this process (training uses the machine's cores itself) and never raises for a failed training."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgequantError
from ..fsutil import atomic_path
from ..jobs import CalibSpec, quiet_logging
from .recipes import Recipe


def qat_available() -> bool:
    """Is torch importable here (without importing it)?"""
    return importlib.util.find_spec("torch") is not None


@dataclass
class QatTrainer:
    """Trains one QAT candidate into ``out_path``; returns a quantize-job-like result dict."""

    model_path: Path
    target: str
    calib: CalibSpec
    threads: int = 0
    progress: Callable[[str], None] | None = None

    def __call__(self, recipe: Recipe, out_path: Path) -> dict:
        from ..qat import train_qat

        try:
            with tempfile.TemporaryDirectory(prefix="edgequant-tune-qat-") as tmp, quiet_logging():
                record = train_qat(self.model_path, tmp, calib=self.calib.spec, target=self.target,
                                   config=recipe.config(self.target), preprocess=self.calib.preprocess,
                                   calib_limit=self.calib.limit, epochs=50, time_budget_min=recipe.qat_minutes,
                                   threads=self.threads, progress=self.progress)
                with atomic_path(out_path) as dest:
                    shutil.copyfile(Path(tmp) / "model.int8.onnx", dest)
        except EdgequantError as exc:
            return {"ok": False, "error": f"QAT: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a failed training must not end the search
            return {"ok": False, "error": f"QAT: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
        fid = record["fidelity"]
        note = (f"QAT: {record['epochs_run']} epoch(s) in {record['train_time_s']:.0f} s (kept epoch "
                f"{record['best_epoch']}, stopped by {record['stopped_by']}); held-out SQNR vs FP32 "
                f"{_sqnr(fid['ptq'])} dB after PTQ -> {_sqnr(fid['qat'])} dB after QAT")
        return {"ok": True, "warnings": [], "notes": [*record.get("ptq_notes", []), note]}


def _sqnr(summary: dict) -> str:
    value = summary.get("sqnr_db") if isinstance(summary, dict) else None
    return f"{value:.1f}" if isinstance(value, (int, float)) else "?"
