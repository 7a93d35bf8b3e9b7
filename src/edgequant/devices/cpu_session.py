"""The CPU device's one way to load a model: an onnxruntime session from a :class:`SessionConfig`.

Kept apart from :mod:`edgequant.devices.cpu` so that the memory probe child imports only
onnxruntime and this module (its bare baseline must import the same).
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import EdgequantError
from ..measure.session import SessionConfig, session_options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line[:400]


def open_session(path: str | Path, cfg: SessionConfig | None = None, *,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """Create an inference session; any failure becomes one EdgequantError naming the file.

    ``options`` replaces the options built from ``cfg`` (profiling, saving the optimized graph).
    """
    cfg = cfg or SessionConfig()
    p = Path(path)
    if not p.exists():
        raise EdgequantError(f"{p}: no such file")
    if not p.is_file():
        raise EdgequantError(f"{p}: not a file")
    available = ort.get_available_providers()
    missing = [name for name in cfg.providers if name not in available]
    if missing:
        raise EdgequantError(f"{p}: execution provider {', '.join(missing)} is not available in this "
                             f"onnxruntime build (available: {', '.join(available)})")
    try:
        return ort.InferenceSession(str(p), sess_options=options or session_options(cfg), providers=list(cfg.providers))
    except Exception as exc:  # ORT raises Fail/InvalidGraph/InvalidProtobuf/NoSuchFile/RuntimeError...
        raise EdgequantError(f"{p}: onnxruntime cannot load the model: {_first_line(exc)}") from None
