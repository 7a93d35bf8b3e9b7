"""Pre-quantization: opset upgrade and ORT's ``quant_pre_process`` with graceful fallbacks.

``quant_pre_process`` folds BatchNorm into Conv and other constants (ORT basic level) and
adds shapes the quantizer needs; its symbolic shape inference fails on many real models, so
we retry without it and, as a last resort, quantize the un-preprocessed model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from edgequant.qdq.passes import MIN_QDQ_OPSET, upgrade_opset

log = logging.getLogger(__name__)


def prepare(model_in: Path, work: Path, passes: list[str], warnings: list[str]) -> Path:
    """Write a quantization-ready copy of ``model_in`` under ``work`` and return its path."""
    model = onnx.load(str(model_in))
    model, before = upgrade_opset(model)
    upgraded = work / "upgraded.onnx"
    if before < MIN_QDQ_OPSET:
        passes.append(f"upgrade_opset({before}->{MIN_QDQ_OPSET})")
    onnx.save(model, str(upgraded))
    del model
    return preprocess(upgraded, work / "preprocessed.onnx", passes, warnings)


def preprocess(src: Path, dst: Path, passes: list[str], warnings: list[str], *, optimize: bool = True) -> Path:
    """``quant_pre_process`` into ``dst``, retrying without symbolic shape inference; ``src``
    itself when both fail. ``optimize=False`` skips ORT's graph optimization (dynamic mode:
    it would fuse MatMul+Add back into Gemm)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [("quant_pre_process", {}),
                ("quant_pre_process(skip_symbolic_shape)", {"skip_symbolic_shape": True})]
    for label, kwargs in attempts:
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=not optimize, **kwargs)
            passes.append(label + (": BatchNorm/constant folding, shape inference" if optimize else ": shape inference"))
            return dst
        except Exception as exc:  # ORT raises many types here; keep going with less.
            log.debug("%s failed: %s", label, exc)
            warnings.append(f"{label} failed: {str(exc).splitlines()[0][:200]}")
    warnings.append("quantizing the model without ORT pre-processing")
    return src
