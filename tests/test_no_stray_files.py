"""Every command leaves the working directory untouched (issue: onnxruntime's shape inference
saves sym_shape_infer_temp.onnx and uuid-named .data files into the cwd and never removes them).

The model contains com.microsoft:Inverse, which onnxruntime runs but its symbolic shape
inference cannot type: exactly the case that used to litter the working directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_models


def _inverse_mlp(path: Path) -> Path:
    return onnx_models.save(onnx_models.inverse_matmul(), path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("stray")
    model = _inverse_mlp(root / "inv.onnx")
    rng = np.random.default_rng(1)
    x = (np.eye(4, dtype=np.float32) * 2 + rng.normal(0, 0.1, (12, 1, 4, 4))).astype(np.float32)
    np.savez(root / "data.npz", x=x)
    (root / "fleet.yaml").write_text(
        f"defaults: {{runs: 3, warmup: 1, threads: 1}}\n"
        f"models:\n  - {{name: inv, model: {model}, calib: {root / 'data.npz'}}}\n")
    return root


COMMANDS = {
    "doctor": ["doctor"],
    "inspect": ["inspect", "{m}"],
    "quantize-dynamic": ["quantize", "{m}", "-o", "{out}/d.onnx", "--mode", "dynamic"],
    "quantize-static": ["quantize", "{m}", "-o", "{out}/s.onnx", "--mode", "static", "--calib", "{d}"],
    "bench": ["bench", "{m}", "--runs", "3", "--warmup", "1", "--no-memory"],
    "eval": ["eval", "{m}", "--data", "{d}", "--reference", "{m}"],
    "run": ["run", "{m}", "--calib", "{d}", "-o", "{out}/run", "--runs", "3", "--warmup", "1"],
    "tune": ["tune", "{m}", "--calib", "{d}", "--eval", "{d}", "-o", "{out}/tune", "--runs", "3",
             "--trial-runs", "3", "--warmup", "1", "--workers", "1", "--max-candidates", "2"],
    "fleet": ["fleet", "{f}", "-o", "{out}/fleet"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_leaves_cwd_empty(workspace: Path, tmp_path: Path, name: str) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [a.format(m=workspace / "inv.onnx", d=workspace / "data.npz", f=workspace / "fleet.yaml", out=tmp_path)
            for a in COMMANDS[name]]
    proc = subprocess.run([sys.executable, "-m", "edgequant", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in cwd.iterdir()) == []
