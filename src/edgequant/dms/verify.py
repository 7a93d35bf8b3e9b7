"""Check a converted ONNX model against its .tflite original on the same real inputs.

The original runs in LiteRT (package ``ai-edge-litert``); when that package is missing the
check is reported as skipped instead of failing the build.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from ..devices import local_cpu

from ..errors import EdgequantError


@dataclass(frozen=True)
class Verification:
    """Outcome of one comparison; ``max_abs_diff`` is over all outputs and samples."""

    status: str  # "ok" | "skipped"
    samples: int = 0
    max_abs_diff: float | None = None
    per_output: dict[str, float] = field(default_factory=dict)
    output_scale: dict[str, float] = field(default_factory=dict)  # max |tflite output|, for scale
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def litert_version() -> str | None:
    """Installed ai-edge-litert version, or None when it cannot run .tflite files here."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        return None
    return metadata.version("ai-edge-litert")


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def compare(tflite_path: Path, onnx_path: Path, samples: np.ndarray) -> Verification:
    """Run (N, C, H, W) samples through both models one at a time; compare every output."""
    if litert_version() is None:
        return Verification("skipped", reason="ai-edge-litert is not installed; "
                                              "pip install ai-edge-litert to verify")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path))
    interp.allocate_tensors()
    (tin,), touts = interp.get_input_details(), interp.get_output_details()
    sess = local_cpu().open(onnx_path)
    in_name = sess.get_inputs()[0].name
    onnx_names = [o.name for o in sess.get_outputs()]
    missing = sorted({d["name"] for d in touts} - set(onnx_names))
    if missing:
        raise EdgequantError(f"{onnx_path}: outputs {missing} of the .tflite model are missing")
    worst: dict[str, float] = {d["name"]: 0.0 for d in touts}
    scale: dict[str, float] = {d["name"]: 0.0 for d in touts}
    for sample in samples:
        x = sample[None].astype(np.float32)
        interp.set_tensor(tin["index"], _nchw_to_nhwc(x))
        interp.invoke()
        got = dict(zip(onnx_names, sess.run(onnx_names, {in_name: x}), strict=True))
        for d in touts:
            ref = interp.get_tensor(d["index"])
            ours = _nchw_to_nhwc(got[d["name"]])
            if ours.size != ref.size:
                raise EdgequantError(f"{onnx_path}: output {d['name']} has {ours.size} values, "
                                     f"the .tflite model {ref.size}")
            diff = float(np.abs(ours.reshape(ref.shape) - ref).max())
            worst[d["name"]] = max(worst[d["name"]], diff)
            scale[d["name"]] = max(scale[d["name"]], float(np.abs(ref).max()))
    return Verification("ok", samples=int(len(samples)), max_abs_diff=max(worst.values()),
                        per_output=worst, output_scale=scale)
