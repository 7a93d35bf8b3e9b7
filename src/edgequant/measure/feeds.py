"""Input feeds for measurement: one set of arrays shared by every model that can take it.

Quantized models keep the FP32 model's input names, so a comparison feeds all variants the very
same arrays; a model whose inputs differ gets its own draw from the same data source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from ..errors import EdgequantError
from ..model import TensorSpec

Feeds = dict[str, np.ndarray]
# A shared feed dict, a dict keyed by model path, or a callable (path, input specs) -> feeds.
FeedsArg = Union[Mapping[str, np.ndarray], Mapping[str, Mapping[str, np.ndarray]],
                 Callable[[str, Sequence[TensorSpec]], Mapping[str, np.ndarray]]]

_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def session_inputs(session: ort.InferenceSession) -> tuple[TensorSpec, ...]:
    """The session's inputs as :class:`TensorSpec` (dynamic dims stay str/None)."""
    specs = []
    for arg in session.get_inputs():
        dtype = np.dtype(_ORT_TYPES.get(arg.type, "object"))
        shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
        specs.append(TensorSpec(arg.name, dtype, shape))
    return tuple(specs)


def fits(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> bool:
    """True when ``feeds`` has every input with the right dtype, rank and fixed dims."""
    for spec in inputs:
        arr = feeds.get(spec.name)
        if arr is None or arr.dtype != spec.dtype or arr.ndim != len(spec.shape):
            return False
        if any(isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape)):
            return False
    return True


def select(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], *, model: str) -> Feeds:
    """Only the arrays this model takes, checked against its inputs."""
    if not fits(feeds, inputs):
        want = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in inputs)
        have = ", ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in feeds.items())
        raise EdgequantError(f"{model}: inputs do not match the feeds (model wants {want}; got {have})")
    return {s.name: np.ascontiguousarray(feeds[s.name]) for s in inputs}


def resolve_feeds(feeds: FeedsArg, paths: Sequence[str],
                  inputs: Sequence[Sequence[TensorSpec]]) -> list[Feeds]:
    """Turn the ``feeds`` argument of the benchmarks into one checked feed dict per model."""
    out: list[Feeds] = []
    for path, specs in zip(paths, inputs):
        if callable(feeds):
            chosen: Any = feeds(path, specs)
        elif feeds and all(isinstance(v, np.ndarray) for v in feeds.values()):
            chosen = feeds  # one feed dict shared by every model
        elif path in feeds:
            chosen = feeds[path]
        else:
            raise EdgequantError(f"{path}: no input feeds given for this model")
        out.append(select(chosen, specs, model=path))
    return out


def feeds_from_source(spec: str, paths: Sequence[str], inputs: Sequence[Sequence[TensorSpec]],
                      *, seed: int = 0, preprocess: Any = None) -> list[Feeds]:
    """One sample from data source ``spec`` per model, shared wherever the inputs match."""
    from ..data import open_source  # imported late: only the CLI path needs data sources

    drawn: list[Feeds] = []
    out: list[Feeds] = []
    for path, specs in zip(paths, inputs):
        reuse = next((f for f in drawn if fits(f, specs)), None)
        if reuse is None:
            source = open_source(spec, specs, preprocess=preprocess, limit=1, seed=seed)
            sample = next(iter(source), None)
            if sample is None:
                raise EdgequantError(f"{spec}: data source has no samples")
            reuse = {k: np.asarray(v) for k, v in sample.feeds.items()}
            drawn.append(reuse)
        out.append(select(reuse, specs, model=path))
    return out
