"""Wheel handling without the network: a fake mediapipe wheel with a RECORD file."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from edgequant.dms import wheel
from edgequant.dms.models import MEDIAPIPE_VERSION, MODELS
from edgequant.errors import EdgequantError


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def fake_wheel(folder: Path, tamper: str | None = None) -> Path:
    path = folder / f"mediapipe-{MEDIAPIPE_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
    lines = []
    with zipfile.ZipFile(path, "w") as zf:
        for spec in MODELS:
            data = spec.name.encode() * 10
            lines.append(_record_line(spec.member, data))
            zf.writestr(spec.member, data + (b"!" if spec.member == tamper else b""))
        zf.writestr(f"mediapipe-{MEDIAPIPE_VERSION}.dist-info/RECORD", "\n".join(lines) + "\n")
    return path


def test_cached_wheel_is_used_without_pip(tmp_path: Path, monkeypatch) -> None:
    made = fake_wheel(tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert wheel.ensure_wheel(tmp_path) == made


def test_extract_checks_record_and_skips_intact_files(tmp_path: Path) -> None:
    whl = fake_wheel(tmp_path)
    out = tmp_path / "out" / "m.tflite"
    sha = wheel.extract_member(whl, MODELS[0].member, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    before = out.stat().st_mtime_ns
    wheel.extract_member(whl, MODELS[0].member, out)
    assert out.stat().st_mtime_ns == before


def test_tampered_member_is_refused(tmp_path: Path) -> None:
    whl = fake_wheel(tmp_path, tamper=MODELS[1].member)
    with pytest.raises(EdgequantError, match="does not match the wheel's RECORD hash"):
        wheel.extract_member(whl, MODELS[1].member, tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / f"mediapipe-{MEDIAPIPE_VERSION}-broken.whl").write_bytes(b"not a zip")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: No matching distribution found for mediapipe==0.10.21"))
    with pytest.raises(EdgequantError, match="could not download mediapipe==0.10.21 from PyPI: "
                                             "ERROR: No matching distribution"):
        wheel.ensure_wheel(tmp_path)
