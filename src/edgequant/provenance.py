"""What produced a result: fingerprints of the tool and of the data, so that a re-run reuses a stored
result (fleet's "up to date", tune's candidate cache) only when it would come out the same."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from . import model as model_io


@functools.lru_cache(maxsize=1)
def tool_fingerprint() -> str:
    """edgequant's own code, onnxruntime's version and this machine's target rule: a new edgequant
    or onnxruntime quantizes differently, and another machine measures differently."""
    import onnxruntime

    from .targets import auto_target

    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    h.update(f"onnxruntime {onnxruntime.__version__} target {auto_target()}".encode())
    return h.hexdigest()


def data_fingerprint(src: str | None) -> str:
    """A data file's bytes; a folder's file names, sizes and modification times (hashing every
    image of a large folder would cost more than the check saves); ``random:N`` as written."""
    if not src or src.startswith("random:"):
        return src or ""
    path = Path(src)
    if path.is_file():
        return model_io.sha256_file(path)
    if not path.is_dir():
        return src
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return json.dumps([(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
