"""Builds the arm64-emu device's root: a Debian arm64 system under qemu-user with the same
onnxruntime version as the host, from Debian's and PyPI's packages only.

Steps (each skipped when already done, so a second run costs a second):
1. tools: ``qemu-user-static`` and ``debootstrap`` from Debian (``apt-get install``);
2. binfmt: mount ``binfmt_misc`` and register ``qemu-aarch64`` from its binfmt.d line (no systemd
   here); the F flag makes the kernel keep the interpreter, so nothing is copied into the root;
3. ``debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv bookworm`` into a
   ``.partial`` folder, renamed when complete (an interrupted build starts that step over);
4. wheels: the host's pip downloads aarch64 wheels of onnxruntime (the host's version) and numpy;
   the root has no CA set-up for pip, so they are installed there with ``--no-index``;
5. the in-guest runner (``_arm64_runner.py``).
/sys is never bind-mounted: onnxruntime's cpuinfo then segfaults under qemu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import EdgequantError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
SUITE = "bookworm"                       # Debian 12: python3.11, like the wheels below
GUEST_PYTHON = "3.11"
VENV = "/opt/edgequant/venv"
RUNNER = "/opt/edgequant/runner.py"
READY = ".edgequant-ready"

Progress = Callable[[str], None]


def default_root() -> Path:
    """Where the root lives: ``$EDGEQUANT_ARM64_ROOT``, else ``~/.cache/edgequant/arm64-emu``."""
    env = os.environ.get("EDGEQUANT_ARM64_ROOT")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgequant" / "arm64-emu"


def host_ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def binfmt_registered() -> bool:
    try:
        return BINFMT_ENTRY.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ready_marker(root: Path) -> Path:
    return root / "rootfs" / READY


def is_ready(root: Path) -> bool:
    marker = ready_marker(root)
    return marker.is_file() and marker.read_text().strip() == host_ort_version()


def _run(cmd: list[str], what: str, **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-1:] or [f"exit {proc.returncode}"]
        raise EdgequantError(f"arm64-emu setup: {what} failed: {tail[0][:300]}")


def _ensure_tools(say: Progress) -> None:
    if shutil.which("debootstrap") and Path("/usr/bin/qemu-aarch64-static").exists():
        return
    if not shutil.which("apt-get"):
        raise EdgequantError("arm64-emu setup: needs Debian's qemu-user-static and debootstrap, and apt-get is missing")
    say("installing qemu-user-static and debootstrap (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-qq", "qemu-user-static", "debootstrap"], "apt-get install", env=env)


def _ensure_binfmt(say: Progress) -> None:
    if binfmt_registered():
        return
    if not BINFMT_CONF.is_file():
        raise EdgequantError(f"arm64-emu setup: {BINFMT_CONF} is missing (qemu-user-static not installed?)")
    if not (BINFMT_DIR / "register").exists():
        say("mounting binfmt_misc")
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mount binfmt_misc")
    say("registering qemu-aarch64 with binfmt_misc")
    line = next(ln for ln in BINFMT_CONF.read_text().splitlines() if ln.startswith(":"))
    try:
        (BINFMT_DIR / "register").write_text(line)
    except OSError as exc:
        if not binfmt_registered():
            raise EdgequantError(f"arm64-emu setup: cannot register qemu-aarch64 with binfmt_misc: {exc}") from None


def _debootstrap(rootfs: Path, say: Progress) -> None:
    if (rootfs / "usr" / "bin" / "python3").exists():
        return
    partial = rootfs.with_name(rootfs.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"debootstrap {SUITE} arm64 (minbase + python3; about 3-5 minutes)")
    _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv", SUITE, str(partial)],
         "debootstrap")
    os.replace(partial, rootfs)


def _wheels(wheel_dir: Path, say: Progress) -> None:
    version = host_ort_version()
    if any(wheel_dir.glob(f"onnxruntime-{version}-*aarch64.whl")):
        return
    say(f"downloading aarch64 wheels: onnxruntime {version}, numpy")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--platform", "manylinux_2_28_aarch64", "--only-binary=:all:",
          "--python-version", GUEST_PYTHON, "-d", str(wheel_dir), f"onnxruntime=={version}", "numpy"], "pip download")


def _chroot(rootfs: Path, *args: str) -> list[str]:
    return ["chroot", str(rootfs), *args]


def _install(rootfs: Path, wheel_dir: Path, say: Progress) -> None:
    guest_wheels = rootfs / "opt" / "edgequant" / "wheels"
    if guest_wheels.exists():
        shutil.rmtree(guest_wheels)
    shutil.copytree(wheel_dir, guest_wheels)
    if not (rootfs / VENV.lstrip("/") / "bin" / "python").exists():
        say("creating the guest's virtual environment")
        _run(_chroot(rootfs, "/usr/bin/python3", "-m", "venv", VENV), "python3 -m venv (in the guest)")
    say("installing onnxruntime and numpy in the guest (no index)")
    _run(_chroot(rootfs, f"{VENV}/bin/python", "-m", "pip", "install", "-q", "--no-index", "--find-links",
                 "/opt/edgequant/wheels", f"onnxruntime=={host_ort_version()}", "numpy"), "pip install (in the guest)")


def install_runner(rootfs: Path) -> None:
    """Copy the in-guest runner (refreshed every time the device is used: it is part of it)."""
    dest = rootfs / RUNNER.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("_arm64_runner.py"), dest)


def setup(root: Path | None = None, progress: Progress | None = None) -> Path:
    """Build (or finish) the arm64 root; returns it. Idempotent and resumable."""
    say = progress or (lambda _msg: None)
    root = Path(root or default_root())
    if sys.platform != "linux":
        raise EdgequantError("arm64-emu setup: needs Linux (qemu-user + binfmt_misc)")
    if os.geteuid() != 0:
        raise EdgequantError("arm64-emu setup: needs root (apt-get, binfmt_misc and chroot); re-run as root")
    _ensure_tools(say)
    _ensure_binfmt(say)
    rootfs = root / "rootfs"
    if is_ready(root):
        install_runner(rootfs)
        return root
    _debootstrap(rootfs, say)
    _wheels(root / "wheels", say)
    _install(rootfs, root / "wheels", say)
    install_runner(rootfs)
    say("checking onnxruntime in the guest")
    _run(_chroot(rootfs, f"{VENV}/bin/python", "-c", "import onnxruntime, numpy; print(onnxruntime.__version__)"),
         "import onnxruntime (in the guest)")
    ready_marker(root).write_text(host_ort_version() + "\n")
    return root
