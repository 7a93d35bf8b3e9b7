"""Softmax input ranges without the attention mask: values far below their row's maximum don't matter.

Mechanism (all-MiniLM-L6-v2, static INT8 collapsing to cosine 0.41): the attention scores reach
the Softmax as ``scores + mask_bias`` where the mask bias is -10000 on padding keys (other exports
use finfo(float32).min). Min/max calibration gives that tensor the range [-10000, ~50], so its 8-bit
step is 39: every real score rounds to one or two levels, each row's softmax turns uniform over
the unmasked keys, and the encoder forgets which token attends where (the zero point even clips
all positive scores to 0). Its SQNR looks fine (the -10000s are the signal), so per-tensor
sensitivity does not point at it.

Rule: Softmax is shift-invariant per row and exponential, so an entry ``F`` below its row's
maximum weighs ``e^-F`` of it. With ``m`` the smallest row maximum seen in calibration and ``N``
the row length, any value below ``m - F`` may be clamped to ``m - F``: all clamped entries of a
row together move each of its probabilities by at most ``N e^-F``. ``F = ln N + 16 ln 2`` keeps
that below 2^-16 (finer than a 16-bit output step). The tensor's range becomes
``[max(rmin, m - F), rmax]``: the mask still masks (clamped keys keep ~0 weight) and the scores
get the 8 bits. A calibration row that is entirely masked (a padding query under a causal mask)
has its maximum at the mask level, so ``m`` and the floor fall with it and the range stays as
it was (exact, no gain). Exact for what it keeps; applies to every target's static recipe.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..qdq.graph import GraphIndex, float_tensors, insert_after_producers, opset_of, save_beside

DESCRIPTION = ("Softmax input floor: values more than ln N + 16 ln 2 below the smallest row maximum "
               "(e.g. an attention mask's -10000) are clamped there, so the scores get the 8 bits")
#: All clamped entries of a row together move its probabilities by at most 2^-FLOOR_BITS.
FLOOR_BITS = 16


@dataclass(frozen=True)
class Floor:
    tensor: str
    rmin: float                 # calibrated minimum (e.g. -10000)
    rmax: float
    min_row_max: float          # smallest row maximum over the calibration samples
    row_length: int
    floor: float                # the range's new lower end (== rmin when nothing is clamped)

    @property
    def shrink(self) -> float:
        """How many times narrower the range became."""
        return (self.rmax - self.rmin) / max(self.rmax - self.floor, 1e-30)


@dataclass
class SoftmaxFloors:
    floors: dict[str, Floor] = field(default_factory=dict)
    samples: int = 0

    @property
    def clamped(self) -> dict[str, Floor]:
        return {t: f for t, f in self.floors.items() if f.floor > f.rmin}

    def overrides(self, ranges: dict | None = None) -> dict[str, list[dict[str, Any]]]:
        """``TensorQuantOverrides`` rmin/rmax for the clamped Softmax inputs, merged with ``ranges``
        (the recipe's other overrides: their rmax is kept, their rmin raised to the floor)."""
        out = dict(ranges or {})
        for t, f in self.clamped.items():
            entry = dict((out.get(t) or [{}])[0])
            rmax = float(entry.get("rmax", f.rmax))
            rmin = max(float(entry.get("rmin", f.rmin)), f.floor)
            entry.update(rmin=np.float32(min(rmin, 0.0)), rmax=np.float32(max(rmax, 0.0)))
            out[t] = [entry]
        return out

    def describe(self) -> str:
        clamped = self.clamped
        if not clamped:
            return f"{DESCRIPTION}: no Softmax input with values below its floor ({len(self.floors)} checked)"
        worst = max(clamped.values(), key=lambda f: f.shrink)
        return (f"{DESCRIPTION}: {len(clamped)} of {len(self.floors)} Softmax input(s) over {self.samples} samples; "
                f"{worst.tensor} [{worst.rmin:.4g}, {worst.rmax:.4g}] -> [{worst.floor:.4g}, {worst.rmax:.4g}] "
                f"({worst.shrink:.0f}x narrower)")


def floor_offset(row_length: int) -> float:
    """``F``: an entry this far below its row's maximum, times ``row_length``, weighs < 2^-FLOOR_BITS."""
    return math.log(max(row_length, 1)) + FLOOR_BITS * math.log(2.0)


def softmax_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """Float activations read by a Softmax -> its axis (normalized later against the rank)."""
    idx = GraphIndex.build(model.graph)
    floats = float_tensors(model)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Softmax" or n.input[0] not in floats or n.input[0] in idx.initializers:
            continue
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), -1)
        out.setdefault(n.input[0], int(axis))
    return out


def _exposed(model_path: Path, out_path: Path, tensors: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """Copy of the model computing per Softmax input, in-graph: min, max, the smallest row maximum
    and the element count (scalars, so no activation is kept alive)."""
    model = onnx.load(str(model_path), load_external_data=False)
    new_axes = opset_of(model) >= 18            # ReduceMax takes axes as an input from opset 18
    extra_nodes: dict[str, list[onnx.NodeProto]] = {}
    names: dict[str, tuple[str, ...]] = {}
    for i, (t, axis) in enumerate(sorted(tensors.items())):
        lo, hi, rowmin, size, rows = (f"edgequant_sm{i}_{k}" for k in ("min", "max", "rowmin", "size", "rows"))
        nodes = [helper.make_node("ReduceMin", [t], [lo], keepdims=0), helper.make_node("ReduceMax", [t], [hi], keepdims=0),
                 helper.make_node("Size", [t], [size])]
        if new_axes:
            axes = f"edgequant_sm{i}_axes"
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([axis], np.int64), axes))
            nodes.append(helper.make_node("ReduceMax", [t, axes], [rows], keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMax", [t], [rows], axes=[axis], keepdims=1))
        nodes.append(helper.make_node("ReduceMin", [rows], [rowmin], keepdims=0))
        rows_size = f"edgequant_sm{i}_rows_size"
        nodes.append(helper.make_node("Size", [rows], [rows_size]))
        extra_nodes[t] = nodes
        for o, typ in ((lo, onnx.TensorProto.FLOAT), (hi, onnx.TensorProto.FLOAT), (rowmin, onnx.TensorProto.FLOAT),
                       (size, onnx.TensorProto.INT64), (rows_size, onnx.TensorProto.INT64)):
            model.graph.output.append(helper.make_tensor_value_info(o, typ, None))
        names[t] = (lo, hi, rowmin, size, rows_size)
    insert_after_producers(model, extra_nodes)
    save_beside(model, out_path, model_path)
    return names


def softmax_floors(model_path: str | Path, samples: Iterable[Any], device: Any) -> SoftmaxFloors:
    """Per Softmax input of the model at ``model_path``: calibrated range, smallest row maximum, floor."""
    model_path = Path(model_path)
    tensors = softmax_inputs(onnx.load(str(model_path), load_external_data=False))
    result = SoftmaxFloors()
    if not tensors:
        return result
    stats: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgequant-softmax-") as tmp:
        exposed = Path(tmp) / "softmax.onnx"
        names = _exposed(model_path, exposed, tensors)
        outputs = [o for v in names.values() for o in v]
        for (values,), _label in device.iter_outputs([exposed], samples, outputs=[outputs]):
            result.samples += 1
            for t, (lo, hi, rowmin, size, rows) in names.items():
                v = [float(np.asarray(values[k])) for k in (lo, hi, rowmin)]
                n = int(np.asarray(values[size])) // max(int(np.asarray(values[rows])), 1)
                if not all(np.isfinite(v)):      # empty tensor; or inf in the data: leave it to ORT
                    continue
                s = stats.setdefault(t, [np.inf, -np.inf, np.inf, 0])
                s[0], s[1], s[2], s[3] = min(s[0], v[0]), max(s[1], v[1]), min(s[2], v[2]), max(s[3], n)
    for t, (rmin, rmax, row_max, n) in stats.items():
        floor = max(rmin, row_max - floor_offset(int(n)))
        result.floors[t] = Floor(t, rmin, rmax, row_max, int(n), floor)
    return result
