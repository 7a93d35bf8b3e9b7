"""Which output positions are padding, so fidelity is judged on the positions a user reads.

A transformer fed fixed-length token inputs computes hidden states for the padding positions too;
nothing downstream reads them (mean pooling and heads apply the same attention mask), yet they can
be most of the tensor (a 32-token sentence padded to 128). Comparing them would judge an INT8 model
on values that carry no meaning. The mask comes from the data: an integer or boolean model input
named like ``attention_mask`` whose per-sample shape is ``[1, T]``; an output ``[N, T, ...]`` with
the same ``T`` gets it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_MASK_NAME = re.compile(r"mask", re.I)


def _mask_input(feeds: Mapping[str, np.ndarray]) -> str | None:
    for name, value in feeds.items():
        arr = np.asarray(value)
        if _MASK_NAME.search(name) and arr.dtype.kind in "biu" and arr.ndim == 2 and arr.shape[0] == 1:
            return name
    return None


def padding_masks(source, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output name -> bool array over its leading axes (``[N, T]`` or ``[N, 1, T]``), True at real
    positions, for each output of ``reference`` (outputs over all samples of ``source``) whose
    sequence axis matches the data's attention mask; empty when there is no such mask or nothing
    is padded."""
    if not any(np.ndim(arr) >= 3 for arr in reference.values()):
        return {}       # no output with a sequence axis: the data need not be read again
    masks: list[np.ndarray] = []
    name = None
    for sample in source:
        name = name or _mask_input(sample.feeds)
        if name is None or name not in sample.feeds:
            return {}
        masks.append(np.asarray(sample.feeds[name]) != 0)
    if not masks or len({m.shape for m in masks}) != 1:
        return {}
    mask = np.concatenate(masks)                      # [N, T]
    if mask.all():
        return {}
    out: dict[str, np.ndarray] = {}
    for name_out, arr in reference.items():
        shape = np.shape(arr)      # samples stacked: [N, T, ...], or [N, 1, T, ...] keeping each batch of 1
        if len(shape) >= 3 and shape[:2] == mask.shape:
            out[name_out] = mask
        elif len(shape) >= 4 and shape[1] == 1 and (shape[0], shape[2]) == mask.shape:
            out[name_out] = mask[:, None, :]
    return out


def describe(masks: Mapping[str, np.ndarray]) -> str | None:
    """One line for the report, or None when no output is masked."""
    if not masks:
        return None
    share = float(np.mean(~next(iter(masks.values()))))
    return (f"padding positions (attention mask 0, {share:.0%} of positions) are left out of the comparison "
            f"of {', '.join(masks)}: nothing downstream reads them")


def real_positions(feeds: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    """For a tensor of one sample read row by row ([1, T, K] or [T, K]): a bool per row, True at
    real tokens, from the sample's attention mask ``[1, T]``; None when the sample has no such
    mask, nothing is padded, or the tensor's rows are not its tokens."""
    name = _mask_input(feeds)
    if name is None:
        return None
    mask = np.asarray(feeds[name]) != 0
    if mask.all() or not mask.any():
        return None
    rows = tuple(shape[:-1])
    if rows in (mask.shape, (mask.shape[1],)):
        return mask.reshape(-1)
    return None
