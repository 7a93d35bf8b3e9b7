"""Consumers of a data source: onnxruntime's calibration reader and batch stacking."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgequantError
from .sources import DataSource, Sample, _is_dynamic

if TYPE_CHECKING:  # onnxruntime is imported lazily: opening a source should not pay for it
    from onnxruntime.quantization import CalibrationDataReader


def calibration_reader(source: DataSource, *, on_sample: Callable[[int], None] | None = None,
                       limit: int | None = None) -> CalibrationDataReader:
    """An onnxruntime ``CalibrationDataReader`` that streams ``source``.

    ``get_next`` returns one feed dict per call and ``None`` once exhausted (and keeps
    returning ``None``); ``rewind`` starts over. ``on_sample(i)`` is called with the 0-based
    index of each sample handed out, for a progress bar. ``limit`` stops after that many samples.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # defined here so importing this module skips onnxruntime
        def __init__(self) -> None:
            self._it: Iterator[Sample] | None = None
            self._index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if limit is not None and self._index >= limit:
                return None
            if self._it is None:
                self._it = iter(source)
            sample = next(self._it, None)
            if sample is None:
                return None
            if on_sample is not None:
                on_sample(self._index)
            self._index += 1
            return sample.feeds

        def rewind(self) -> None:
            if self._it is not None and hasattr(self._it, "close"):
                self._it.close()  # release open files now, not at garbage collection
            self._it, self._index = None, 0

        def __len__(self) -> int:
            return len(source) if limit is None else min(limit, len(source))

    return _Reader()


def stack_feeds(source: DataSource, n: int | None = None) -> dict[str, np.ndarray]:
    """Concatenate the first ``n`` samples (all if None) along the batch axis, for batched runs.

    Only inputs whose first dim is dynamic can be batched; a static first dim is an error.
    """
    fixed = [s.name for s in source.inputs if not s.shape or not _is_dynamic(s.shape[0])]
    if fixed and n != 1:
        raise EdgequantError(f"{source.spec}: cannot batch samples: model input '{fixed[0]}' has a fixed first dim")
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in source.inputs}
    for i, sample in enumerate(source):
        if n is not None and i >= n:
            break
        for name, arr in sample.feeds.items():
            parts[name].append(arr)
    if not any(parts.values()):
        raise EdgequantError(f"{source.spec}: no samples to stack")
    try:
        return {name: np.concatenate(arrs, axis=0) for name, arrs in parts.items()}
    except ValueError as exc:
        raise EdgequantError(f"{source.spec}: samples differ in shape and cannot be stacked ({exc})") from None
