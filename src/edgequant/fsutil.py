"""Atomic file writes: outputs appear whole or not at all, inputs are never overwritten."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import EdgequantError


def refuse_overwrite(out: str | Path, *inputs: str | Path) -> None:
    """Refuse an output path that is one of the inputs (same file, even through links)."""
    out_p = Path(out)
    for inp in inputs:
        in_p = Path(inp)
        same = out_p.resolve() == in_p.resolve()
        if not same and out_p.exists() and in_p.exists():
            same = os.path.samefile(out_p, in_p)
        if same:
            raise EdgequantError(f"{out}: output path is the input model; choose another -o path")


@contextlib.contextmanager
def atomic_path(out: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``out`` on success."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise EdgequantError(f"{out}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_p = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_p, 0o666 & ~umask)  # mkstemp creates 0600; outputs should look like any other file
    try:
        yield tmp_p
        os.replace(tmp_p, out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:   # the partial file goes; the old output (if any) stays
            raise EdgequantError(f"{out}: no space left on device writing it") from None
        raise
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


def write_bytes_atomic(out: str | Path, data: bytes) -> None:
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(out: str | Path, text: str) -> None:
    write_bytes_atomic(out, text.encode("utf-8"))


_CWD_LOCK = threading.RLock()


@contextlib.contextmanager
def scratch_cwd(folder: str | Path) -> Iterator[Path]:
    """Run third-party code with ``folder`` (a per-run temp folder) as the working directory.

    onnxruntime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` plus a uuid-named
    ``.data`` file into the current directory whenever inference is incomplete, and never
    removes them (tens of MB per run). Only code that gets absolute paths may run in here.

    The working directory belongs to the process, not the thread: tune quantizes in a background
    thread while the search runs, and two interleaved blocks would each restore the other's folder
    (the process then sits in a deleted temp folder). One block runs at a time; the code inside
    never waits on another thread, so the lock cannot deadlock.
    """
    with _CWD_LOCK:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)
