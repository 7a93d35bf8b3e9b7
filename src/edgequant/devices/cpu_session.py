"""The CPU device's one way to load a model: an onnxruntime session from a :class:`SessionConfig`.

Kept apart from :mod:`edgequant.devices.cpu` so that the memory probe child imports only
onnxruntime and this module (its bare baseline must import the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import EdgequantError
from ..measure.session import SessionConfig, session_options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line[:400]


def open_session(path: str | Path, cfg: SessionConfig | None = None, *,
                 options: ort.SessionOptions | None = None, plugin_ep: bool = False) -> ort.InferenceSession:
    """Create an inference session; any failure becomes one EdgequantError naming the file.

    ``options`` replaces the options built from ``cfg`` (profiling, saving the optimized graph);
    ``plugin_ep``: the options already name a plugin EP's devices, so no provider list is passed.
    """
    cfg = cfg or SessionConfig()
    p = Path(path)
    if not p.exists():
        raise EdgequantError(f"{p}: no such file")
    if not p.is_file():
        raise EdgequantError(f"{p}: not a file")
    available = ort.get_available_providers()
    missing = [] if plugin_ep else [name for name in cfg.providers if name not in available]
    if missing:
        raise EdgequantError(f"{p}: execution provider {', '.join(missing)} is not available in this "
                             f"onnxruntime build (available: {', '.join(available)})")
    try:
        if plugin_ep:
            return ort.InferenceSession(str(p), sess_options=options)
        return ort.InferenceSession(str(p), sess_options=options or session_options(cfg), providers=list(cfg.providers))
    except Exception as exc:  # ORT raises Fail/InvalidGraph/InvalidProtobuf/NoSuchFile/RuntimeError...
        raise EdgequantError(f"{p}: onnxruntime cannot load the model: {_first_line(exc)}") from None


def inference_error(path: str, exc: BaseException, where: str = "") -> EdgequantError:
    """One line naming the model and onnxruntime's first line of complaint."""
    first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return EdgequantError(f"{path}: inference failed{where}: {first.strip()[:400]}")


def iter_session_outputs(sessions: Sequence[ort.InferenceSession], paths: Sequence[str], samples: Iterable[Any],
                         outputs: Sequence[Sequence[str]] | None = None,
                         ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
    """Per sample, every session's outputs by name (and the sample's label): one sample in flight."""
    from ..measure.feeds import select, session_inputs
    from ..measure.fidelity import feeds_of

    specs = [session_inputs(s) for s in sessions]
    names = [list(outputs[i]) if outputs is not None else [o.name for o in s.get_outputs()]
             for i, s in enumerate(sessions)]
    for count, sample in enumerate(samples):
        feeds, label = feeds_of(sample)
        per_model = []
        for i, sess in enumerate(sessions):
            f = select(feeds, specs[i], model=paths[i])
            try:
                values = sess.run(names[i], f)
            except Exception as exc:  # noqa: BLE001 - ORT raises many types
                raise inference_error(paths[i], exc, f" on sample {count}") from None
            per_model.append(dict(zip(names[i], values)))
        yield per_model, label
