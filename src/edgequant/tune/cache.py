"""Candidate cache: a re-run of ``tune`` resumes without re-quantizing or re-measuring.

Layout under ``out_dir/.tune-cache/``: one folder per (model sha256, recipe, calibration data)
holding ``model.onnx`` and ``quantize.json`` (written last: its presence marks a complete entry),
plus ``measure-<key>.json`` per evaluation setting (data, metric, session, trial runs).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import EdgequantError
from ..fsutil import write_text_atomic

CACHE_DIR = ".tune-cache"


def digest(doc: Any) -> str:
    """Stable hash of a JSON-able document."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for this tune alone (a lock on ``.tune-cache/lock``, released when the run ends or
    its process dies): a second tune writing the same cache would replace entries the first is reading."""
    import fcntl

    root = Path(out_dir) / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            raise EdgequantError(f"{out_dir}: another edgequant tune is writing to this folder"
                                 + (f" (pid {holder})" if holder else "")
                                 + "; wait for it to finish or choose another output folder (-o)") from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TuneCache:
    """Quantized candidates and their trial measurements, keyed by content, not by name."""

    def __init__(self, out_dir: Path, model_sha: str, calib_context: dict, measure_context: dict) -> None:
        self.root = Path(out_dir) / CACHE_DIR
        self.model_sha = model_sha
        self.calib_context = calib_context
        self.measure_key = digest(measure_context)[:16]

    def entry(self, recipe_dict: dict) -> Path:
        key = digest({"model": self.model_sha, "recipe": recipe_dict, "calib": self.calib_context})
        return self.root / f"{self.model_sha[:12]}-{key[:16]}"

    def model_path(self, recipe_dict: dict) -> Path:
        return self.entry(recipe_dict) / "model.onnx"

    def quantized(self, recipe_dict: dict) -> dict | None:
        """The stored quantization result (notes, warnings) if the model is complete, else None."""
        entry = self.entry(recipe_dict)
        meta = entry / "quantize.json"
        if not (meta.is_file() and (entry / "model.onnx").is_file()):
            return None
        try:
            return json.loads(meta.read_text())
        except (OSError, ValueError):
            return None

    def store_quantized(self, recipe_dict: dict, result: dict) -> None:
        write_text_atomic(self.entry(recipe_dict) / "quantize.json",
                          json.dumps({"recipe": recipe_dict, **result}, indent=2, default=str) + "\n")

    def measured(self, recipe_dict: dict) -> dict | None:
        path = self.entry(recipe_dict) / f"measure-{self.measure_key}.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def store_measured(self, recipe_dict: dict, measurement: dict) -> None:
        from ..report import json_safe

        write_text_atomic(self.entry(recipe_dict) / f"measure-{self.measure_key}.json",
                          json.dumps(json_safe(measurement), indent=2) + "\n")
