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
# A shared feed dict, a dict keyed by model path, a list with one feed dict per model (same
# order), or a callable (path, input specs) -> feeds.
FeedsArg = Union[Mapping[str, np.ndarray], Mapping[str, Mapping[str, np.ndarray]],
                 Sequence[Mapping[str, np.ndarray]],
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
    # np.asarray(order="C"), not np.ascontiguousarray: that one turns a scalar input ([]) into [1]
    return {s.name: np.asarray(feeds[s.name], order="C") for s in inputs}


def resolve_feeds(feeds: FeedsArg, paths: Sequence[str],
                  inputs: Sequence[Sequence[TensorSpec]]) -> list[Feeds]:
    """Turn the ``feeds`` argument of the benchmarks into one checked feed dict per model."""
    out: list[Feeds] = []
    if isinstance(feeds, Sequence) and len(feeds) != len(paths):
        raise EdgequantError(f"got {len(feeds)} feed dicts for {len(paths)} models")
    for i, (path, specs) in enumerate(zip(paths, inputs)):
        if isinstance(feeds, Sequence):
            chosen: Any = feeds[i]
        elif callable(feeds):
            chosen = feeds(path, specs)
        elif feeds and all(isinstance(v, np.ndarray) for v in feeds.values()):
            chosen = feeds  # one feed dict shared by every model
        elif path in feeds:
            chosen = feeds[path]
        else:
            raise EdgequantError(f"{path}: no input feeds given for this model")
        out.append(select(chosen, specs, model=path))
    return out


class SourceFeeds:
    """Callable ``(path, inputs) -> feeds`` drawing one sample per distinct input signature.

    Pass it as ``feeds_per_model`` to the benchmarks: they call it once per model after creating
    the sessions, so a model is never loaded twice just to learn its inputs. Models whose inputs
    fit an earlier draw share that draw; ``by_path`` keeps what each model got (for the memory
    probe, which must see the same inputs).
    """

    def __init__(self, spec: str, *, seed: int = 0, preprocess: Any = None) -> None:
        self.spec, self.seed, self.preprocess = spec, seed, preprocess
        self.synthetic: bool | None = None
        self.notes: list[str] = []
        self._drawn: list[Feeds] = []
        self.by_path: dict[str, Feeds] = {}

    def __call__(self, path: str, inputs: Sequence[TensorSpec]) -> Feeds:
        reuse = next((f for f in self._drawn if fits(f, inputs)), None)
        if reuse is None:
            from ..data import open_source  # imported late: only CLI/API paths need data sources

            source = open_source(self.spec, inputs, preprocess=self.preprocess, limit=1, seed=self.seed)
            self.synthetic = source.synthetic
            self.notes.extend(n for n in source.notes if n not in self.notes)
            sample = next(iter(source), None)
            if sample is None:
                raise EdgequantError(f"{self.spec}: data source has no samples")
            reuse = {k: np.asarray(v) for k, v in sample.feeds.items()}
            self._drawn.append(reuse)
        self.by_path[str(path)] = select(reuse, inputs, model=str(path))
        return self.by_path[str(path)]


def feeds_from_source(spec: str, paths: Sequence[str], inputs: Sequence[Sequence[TensorSpec]],
                      *, seed: int = 0, preprocess: Any = None) -> list[Feeds]:
    """One sample from data source ``spec`` per model, shared wherever the inputs match."""
    source = SourceFeeds(spec, seed=seed, preprocess=preprocess)
    return [source(p, specs) for p, specs in zip(paths, inputs)]
