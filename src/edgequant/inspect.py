"""Facts about one ONNX file: what ``edgequant inspect`` shows and :func:`edgequant.api.inspect` returns.

Reads the file (opset, inputs/outputs, op counts, size, sha256) and, for a quantized model, asks
the device which compute ops run as INT8 kernels once onnxruntime has optimized the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import model as model_io
from .measure.coverage import Coverage


@dataclass(frozen=True)
class TensorFacts:
    """A graph input or output as reported: name, dtype name, shape (str/None for dynamic dims)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelFacts:
    """``edgequant inspect``'s facts; ``int8_coverage`` is None for a float model."""

    path: str
    opset: int
    ir_version: int
    producer: str
    size_bytes: int
    sha256: str
    inputs: tuple[TensorFacts, ...]
    outputs: tuple[TensorFacts, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    quantized: bool = False
    int8_coverage: Coverage | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``edgequant inspect --json`` prints."""
        return {
            "path": self.path, "opset": self.opset, "ir_version": self.ir_version, "producer": self.producer,
            "size_bytes": self.size_bytes, "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "op_counts": dict(self.op_counts), "quantized": self.quantized,
            "int8_coverage": self.int8_coverage.to_dict() if self.int8_coverage is not None else None,
        }


def _tensors(specs: tuple[model_io.TensorSpec, ...]) -> tuple[TensorFacts, ...]:
    return tuple(TensorFacts(s.name, str(s.dtype), tuple(s.shape)) for s in specs)


def model_facts(path: str | Path) -> ModelFacts:
    """Load ``path`` (one-line error if missing or not ONNX) and gather its facts."""
    path = Path(path)
    proto = model_io.load_model(path)
    info = model_io.describe(proto, path)
    coverage = None
    if info.is_quantized:
        from .devices import local_cpu

        coverage = local_cpu().coverage(path)
    return ModelFacts(
        path=str(path), opset=info.opset, ir_version=info.ir_version, producer=info.producer,
        size_bytes=model_io.model_size_bytes(path), sha256=model_io.sha256_file(path),
        inputs=_tensors(info.inputs), outputs=_tensors(info.outputs), op_counts=dict(info.op_counts),
        quantized=info.is_quantized, int8_coverage=coverage)
