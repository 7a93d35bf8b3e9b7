from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import onnx_models  # noqa: E402


@pytest.fixture
def conv_model(tmp_path: Path) -> Path:
    return onnx_models.save(onnx_models.conv_net(opset=12), tmp_path / "conv.onnx")


@pytest.fixture
def matmul_model(tmp_path: Path) -> Path:
    return onnx_models.save(onnx_models.matmul_net(), tmp_path / "mlp.onnx")


@pytest.fixture
def conv_calib(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32))
    return path


@pytest.fixture
def sensitive(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An MLP with one layer that 8-bit quantization destroys, with calibration/eval data."""
    import onnx

    from test_tune_helpers import data_for, sensitive_mlp

    path = tmp_path / "sensitive.onnx"
    onnx.save(sensitive_mlp(), str(path))
    calib, evals = data_for(path, tmp_path)
    return path, calib, evals
