"""High-bias absorption (Nagel et al. 2019, "Data-Free Quantization", section 4.1.2), with data.

Why: after equalization (or in a trained net as it is) some Conv -> Relu channels carry a large
bias, so the Relu output lives in, say, [39, 41]: the activation's 8-bit range must include 0 and
spends its 256 levels on [0, 41], leaving the signal a dozen. If channel i's pre-activation stays
above c_i >= 0 on the data, Relu(y_i) = Relu(y_i - c_i) + c_i, and the constant c_i moves into the
next Conv's bias: b2 += W2 . c (summed over its kernel); the same holds for PRelu and LeakyRelu, which
are the identity above 0. Exact wherever y_i >= c_i; the next Conv must
have no padding (a padded border would miss the constant). c_i is the channel's smallest
pre-activation on the calibration samples less a tenth of its spread, so that inputs a little
outside the calibration range still satisfy it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..qdq.graph import GraphIndex, attribute, expose_tensors, use_counts
from .equalization import conv_group, scale_in_channels

DESCRIPTION = ("high-bias absorption: a Conv -> Relu channel whose output never falls below c sheds c "
               "into the next Conv's bias, so its 8-bit range no longer spans [0, c]")
# activations equal to the identity for inputs >= 0: f(y) = f(y - c) + c whenever y >= c >= 0
_IDENTITY_ABOVE_ZERO = ("Relu", "PRelu", "LeakyRelu")
MARGIN = 0.1          # of a channel's calibrated spread, kept below its minimum
SAMPLES = 64


@dataclass
class BiasAbsorption:
    """Conv -> (channels absorbed, largest constant moved)."""

    absorbed: dict[str, tuple[int, float]] = field(default_factory=dict)
    samples: int = 0

    def describe(self) -> str:
        if not self.absorbed:
            return f"{DESCRIPTION}: no Conv -> Relu -> Conv channel with a positive floor"
        channels = sum(n for n, _ in self.absorbed.values())
        worst = max(self.absorbed, key=lambda k: self.absorbed[k][1])
        return (f"{DESCRIPTION}: {channels} channel(s) of {len(self.absorbed)} conv(s) over {self.samples} "
                f"samples; largest constant {self.absorbed[worst][1]:.3g} at {worst}")


@dataclass
class _Site:
    conv1: onnx.NodeProto
    relu: onnx.NodeProto
    conv2: onnx.NodeProto


def find_sites(model: onnx.ModelProto) -> list[_Site]:
    """Conv (bias, output read only by a Relu/PRelu/LeakyRelu) -> that activation -> exactly one unpadded
    Conv with constant weights."""
    idx = GraphIndex.build(model.graph)
    uses = use_counts(model.graph)
    sites = []
    for conv1 in model.graph.node:
        if conv1.op_type != "Conv" or len(conv1.input) < 3 or conv1.input[2] not in idx.initializers:
            continue
        if uses.get(conv1.input[2], 0) != 1:
            continue
        readers = idx.consumers.get(conv1.output[0], [])
        if len(readers) != 1 or readers[0].op_type not in _IDENTITY_ABOVE_ZERO or conv1.output[0] in idx.graph_outputs:
            continue
        relu = readers[0]
        nxt = idx.consumers.get(relu.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or relu.output[0] in idx.graph_outputs:
            continue
        conv2 = nxt[0]
        if conv2.input[0] != relu.output[0] or conv2.input[1] not in idx.initializers:
            continue
        if any(attribute(conv2, "pads", [0])) or attribute(conv2, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            continue
        if len(conv2.input) > 2 and conv2.input[2] and uses.get(conv2.input[2], 0) != 1:
            continue
        sites.append(_Site(conv1, relu, conv2))
    return sites


def _floors(model_path: Path, sites: list[_Site], samples: Iterable[Any], device: Any) -> tuple[dict[str, np.ndarray], int]:
    """Per site, each channel's constant c (0 where the pre-activation reaches 0 or below)."""
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    count = 0
    with tempfile.TemporaryDirectory(prefix="edgequant-hba-") as tmp:
        exposed = Path(tmp) / "m.onnx"
        names = expose_tensors(model_path, exposed, {s.conv1.output[0] for s in sites})
        for (values,), _ in device.iter_outputs([exposed], itertools.islice(samples, SAMPLES), outputs=[names]):
            for t, arr in values.items():
                a = np.moveaxis(np.asarray(arr, np.float64), 1, 0).reshape(np.shape(arr)[1], -1)
                lo, hi = a.min(axis=1), a.max(axis=1)
                lows[t] = np.minimum(lows[t], lo) if t in lows else lo
                highs[t] = np.maximum(highs[t], hi) if t in highs else hi
            count += 1
    floors = {t: np.maximum(lows[t] - MARGIN * (highs[t] - lows[t]), 0.0) for t in lows}
    return floors, count


def absorb_high_biases(src: Path, dst: Path, samples: Iterable[Any], device: Any) -> BiasAbsorption:
    """Write ``src`` with high biases absorbed to ``dst`` (a copy of ``src`` when none)."""
    model = onnx.load(str(src))
    sites = find_sites(model)
    result = BiasAbsorption()
    if sites:
        floors, result.samples = _floors(Path(src), sites, samples, device)
        inits = {t.name: t for t in model.graph.initializer}
        for s in sites:
            c = floors.get(s.conv1.output[0])
            if c is None or not np.any(c > 0):
                continue
            b1 = numpy_helper.to_array(inits[s.conv1.input[2]])
            w2 = numpy_helper.to_array(inits[s.conv2.input[1]]).astype(np.float64)
            group, dtype = conv_group(s.conv2), b1.dtype
            if b1.shape != c.shape or c.size != group * w2.shape[1]:
                continue
            # b2[o] += W2[o] . c over o's input channels and kernel taps: W2 with input channel i scaled by c_i
            delta = scale_in_channels(w2, group, c).reshape(w2.shape[0], -1).sum(axis=1)
            inits[s.conv1.input[2]].CopyFrom(numpy_helper.from_array((b1 - c).astype(dtype), s.conv1.input[2]))
            if len(s.conv2.input) > 2 and s.conv2.input[2]:
                b2 = numpy_helper.to_array(inits[s.conv2.input[2]]).astype(np.float64)
                inits[s.conv2.input[2]].CopyFrom(numpy_helper.from_array((b2 + delta).astype(dtype), s.conv2.input[2]))
            else:
                name = f"{s.conv2.name or s.conv2.output[0]}_absorbed_bias"
                model.graph.initializer.append(numpy_helper.from_array(delta.astype(dtype), name))
                while len(s.conv2.input) < 3:
                    s.conv2.input.append("")
                s.conv2.input[2] = name
            result.absorbed[s.conv1.name or s.conv1.output[0]] = (int(np.sum(c > 0)), float(c.max()))
    onnx.save(model, str(dst))
    return result
