"""Fetch the mediapipe wheel from PyPI and read its .tflite models, checked against RECORD.

mediapipe itself is never installed: its wheel is only a signed-off container for the
model files, downloaded with ``python -m pip download`` into the build cache.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import EdgequantError
from ..fsutil import write_bytes_atomic
from .models import MEDIAPIPE_VERSION, MODELS

# Tried in order: this interpreter's own platform, then the wheel the models were first
# taken from (the .tflite members are the same in every platform's wheel).
_PIP_TARGETS: tuple[tuple[str, ...], ...] = (
    (),
    ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"),
)


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """Member -> hex sha256 from the wheel's RECORD file."""
    record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        raise EdgequantError(f"{zf.filename}: wheel has no RECORD file")
    hashes = {}
    for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
        if len(row) >= 2 and row[1].startswith("sha256="):
            digest = base64.urlsafe_b64decode(row[1][7:] + "=" * (-len(row[1][7:]) % 4))
            hashes[row[0]] = digest.hex()
    return hashes


def wheel_is_valid(path: Path) -> bool:
    """A readable zip holding every model member listed in its RECORD."""
    try:
        with zipfile.ZipFile(path) as zf:
            hashes = _record_hashes(zf)
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile, EdgequantError):
        return False
    return all(m.member in names and m.member in hashes for m in MODELS)


def find_wheel(wheel_dir: Path) -> Path | None:
    """A valid cached mediapipe wheel of the pinned version, if any."""
    for path in sorted(wheel_dir.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl")):
        if wheel_is_valid(path):
            return path
    return None


def ensure_wheel(wheel_dir: Path) -> Path:
    """Return the cached wheel, downloading it from PyPI (no dependencies) when missing."""
    found = find_wheel(wheel_dir)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in _PIP_TARGETS:
        with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download.") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", *extra, f"mediapipe=={MEDIAPIPE_VERSION}",
                   "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = sorted(Path(tmp).glob("mediapipe-*.whl"))
            if proc.returncode == 0 and got and wheel_is_valid(got[0]):
                target = wheel_dir / got[0].name
                shutil.move(str(got[0]), target)  # same filesystem: an atomic rename
                return target
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            errors.append(tail[0])
    raise EdgequantError(f"{wheel_dir}: could not download mediapipe=={MEDIAPIPE_VERSION} "
                         f"from PyPI: {errors[-1]}")


def member_sha256(wheel: Path, member: str) -> str:
    """The sha256 RECORD promises for one wheel member."""
    with zipfile.ZipFile(wheel) as zf:
        return _record_hashes(zf)[member]


def extract_member(wheel: Path, member: str, out: Path) -> str:
    """Write one member to ``out`` (skipped when already there and intact); return its sha256."""
    want = member_sha256(wheel, member)
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == want:
        return want
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    if hashlib.sha256(data).hexdigest() != want:
        raise EdgequantError(f"{wheel}: {member} does not match the wheel's RECORD hash")
    write_bytes_atomic(out, data)
    return want
