"""Activation ranges of tensors that carry a float sentinel, such as an attention mask's finfo.min.

Mechanism (Hugging Face ``BertModel`` export, static INT8 at cosine 0.10-0.32 whatever the
calibration method): transformers writes the additive attention mask as ``finfo(float32).min``
on padding keys (older exports: -10000). Calibrated as it is, the mask tensor spans
[-3.4e38, 0], a uint8 step of 1.3e36. onnxruntime fuses the score ``Add`` into ``QLinearAdd``,
whose input-to-output scale ratio (~5e36 here) overflows float32 inside the kernel: every
position, masked or not, comes out at the output's lowest code, so each Softmax row turns uniform
(a 7-node QDQ graph reproduces it: fused output -15.96 everywhere, unfused float reference exact).
Keeping those six Adds float restores pooled cosine 0.98; no range statistic can, because the
sentinels are most of the tensor.

Rule: a range end beyond ``SENTINEL`` (1e30) is a marker, not a magnitude, and is capped at
``CAP`` (1e4, BERT's own mask value). The other end keeps its value (0, the unmasked positions,
stays exact as the zero point), the sentinels saturate at -1e4, and -1e4 still masks: added to
any score within 1e4 - 104 of its row's maximum, exp underflows to 0 in float32, as it does for
finfo.min. Tensors without such values are untouched, so the rule applies to every static recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A calibrated range end at or beyond this magnitude is taken for a sentinel (finfo(float32).min is -3.4e38).
SENTINEL = 1e30
#: ... and capped here: BERT's original -10000 mask value, far beyond any attention score.
CAP = 1e4
DESCRIPTION = (f"float sentinels (e.g. an attention mask's finfo.min) capped at +-{CAP:g} in the activation "
               "ranges, so onnxruntime's QLinearAdd scale ratios stay finite")


@dataclass(frozen=True)
class SentinelCaps:
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    capped: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{DESCRIPTION}: {len(self.capped)} tensor(s), e.g. {self.capped[0]}" if self.capped else ""


def _is_sentinel(key: str, value: Any) -> bool:
    return key in ("rmin", "rmax") and abs(float(value)) >= SENTINEL


def cap_sentinels(overrides: Mapping[str, list[dict[str, Any]]]) -> SentinelCaps:
    """``overrides`` (onnxruntime ``TensorQuantOverrides``) with every rmin/rmax beyond ``SENTINEL``
    capped at ``CAP``, and the names of the tensors that changed."""
    out = {name: [{k: np.float32(np.sign(float(v)) * CAP) if _is_sentinel(k, v) else v for k, v in entry.items()}
                  for entry in entries] for name, entries in overrides.items()}
    capped = tuple(name for name, entries in overrides.items()
                   if any(_is_sentinel(k, v) for entry in entries for k, v in entry.items()))
    return SentinelCaps(out, capped)
