"""TFLite -> ONNX with tflite2onnx (pure Python, no TensorFlow), plus the fixes our models need.

Fixes, applied only while converting:
- PReLU alpha fed by a DEQUANTIZE (fp16 weights, as in face_landmark.tflite): tflite2onnx
  pads the alpha's shape [1,1,C] to rank 4 so its NHWC->NCHW layout pass can permute it,
  but leaves the DEQUANTIZE's fp16 source at rank 3; the same layout then reaches that
  tensor and the permutation fails with IndexError. We pad the source the same way.
- A PAD's paddings constant shared by several PADs (pose_landmark_full.tflite): tflite2onnx
  rewrites the constant in place from TFLite's [n, 2] to ONNX's flat order when it transforms
  the first PAD, and the second PAD's transform then fails on the already-flat array
  (IndexError). The rewritten constant serves every PAD of the same layout, so it is done once.
- Opset: tflite2onnx writes opset 11; we upgrade to 13 so per-channel QDQ is possible.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import version_converter

from ..errors import EdgequantError
from ..fsutil import atomic_path

TARGET_OPSET = 13
RECIPE_VERSION = 2  # bump when this module's output changes: cached models are reconverted


@contextlib.contextmanager
def prelu_alpha_fix() -> Iterator[None]:
    """Patch tflite2onnx's PReLU parsing so a dequantized alpha keeps one rank (see module doc)."""
    import tflite
    from tflite2onnx.op.activation import Activation

    original = Activation.parse

    def parse(self) -> None:  # type: ignore[no-untyped-def]
        original(self)
        op = self.tflite
        if op is None or self.model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() \
                != tflite.BuiltinOperator.PRELU:
            return
        alpha = self.inputs[1]
        for producer in alpha.producers:  # the DEQUANTIZE, already parsed (topological order)
            for src in producer.inputs:
                if len(src.shape) == len(alpha.shape) - 1:
                    src.shape.insert(0, 1)

    Activation.parse = parse
    try:
        yield
    finally:
        Activation.parse = original


@contextlib.contextmanager
def shared_pads_fix() -> Iterator[None]:
    """Patch tflite2onnx's PAD transform to convert a shared paddings constant once (module doc)."""
    from tflite2onnx.op.padding import Padding

    original = Padding.transform

    def transform(self) -> None:  # type: ignore[no-untyped-def]
        if len(self.inputs[1].shape) == 1:     # already ONNX's flat [begins..., ends...]
            return
        original(self)

    Padding.transform = transform
    try:
        yield
    finally:
        Padding.transform = original


def _canonical_order(graph: onnx.GraphProto) -> None:
    """Sort initializers and value_info by name: tflite2onnx emits them from Python sets,
    so without this the same .tflite gives different bytes (and sha256) run to run."""
    for field in (graph.initializer, graph.value_info):
        items = sorted(field, key=lambda t: t.name)
        copies = [type(t)() for t in items]
        for c, t in zip(copies, items, strict=True):
            c.CopyFrom(t)
        del field[:]
        field.extend(copies)


def tflite_to_onnx(tflite_path: Path, onnx_path: Path, opset: int = TARGET_OPSET,
                   fix_prelu: bool = True) -> onnx.ModelProto:
    """Convert, upgrade the opset, check, and write ``onnx_path`` atomically."""
    import tflite2onnx

    logger = logging.getLogger("tflite2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns about every fp16 tensor it folds to fp32
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            with prelu_alpha_fix() if fix_prelu else contextlib.nullcontext(), shared_pads_fix():
                tflite2onnx.convert(str(tflite_path), str(raw))
            model = onnx.load(str(raw))
    except (AssertionError, IndexError, ValueError, NotImplementedError) as exc:
        raise EdgequantError(f"{tflite_path}: tflite2onnx failed: {type(exc).__name__}: {exc}") from None
    finally:
        logger.setLevel(level)
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current < opset:
        model = version_converter.convert_version(model, opset)
    model.producer_name, model.producer_version = "tflite2onnx", tflite2onnx.__version__
    _canonical_order(model.graph)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(onnx_path) as tmp_path:
        onnx.save(model, str(tmp_path))
    return model
