"""Files through Ray's object store by content hash: each distinct file travels once.

The driver puts a file's bytes (a folder: its files' bytes by relative path) and refers to it by
sha256; a worker writes them under a content-addressed folder of its own temp directory, reused
by every later task on that node that needs the same content."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shipped:
    """A file or folder in the object store: what a worker needs to materialize it."""

    sha: str
    name: str                 # file or folder name (extensions matter to the readers)
    ref: Any                  # ray.ObjectRef of bytes (file) or {relative path: bytes} (folder)
    folder: bool = False


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(payload: bytes | dict[str, bytes]) -> str:
    h = hashlib.sha256()
    if isinstance(payload, bytes):
        h.update(payload)
    else:
        for rel, data in sorted(payload.items()):
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


class Shipper:
    """Driver side: one object-store entry per distinct content."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._by_sha: dict[str, Any] = {}

    def ship(self, path: str | Path) -> Shipped:
        path = Path(path)
        payload = _read_tree(path) if path.is_dir() else path.read_bytes()
        sha = _digest(payload)
        if sha not in self._by_sha:
            self._by_sha[sha] = self._ray.put(payload)
        return Shipped(sha, path.name, self._by_sha[sha], folder=path.is_dir())


def materialize(item: Shipped, ray: Any, root: Path | None = None) -> Path:
    """Worker side: the shipped file/folder on this node's disk (written once per content)."""
    root = root or Path(tempfile.gettempdir()) / "edgequant-ray"
    dest = root / item.sha / item.name
    if dest.exists():
        return dest
    payload = ray.get(item.ref)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_ensure(root)))
    target = staging / item.name
    if item.folder:
        for rel, data in payload.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
    else:
        target.write_bytes(payload)
    _ensure(dest.parent)
    try:
        os.replace(target, dest)   # atomic: a concurrent task on this node sees all or nothing
    except OSError:
        if not dest.exists():
            raise
    return dest


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
