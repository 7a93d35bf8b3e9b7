"""Empirical bias correction: a layer whose weight rounding shifts its output mean (planted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model


def _biased_conv(path: Path) -> Path:
    """1x1 conv, 64 -> 4 channels: per channel one large weight and 63 small positive ones that
    int8 rounds to 0, so on positive inputs every channel's output mean drops by ~0.003 * sum(x)."""
    w = np.full((4, 64, 1, 1), 0.003, np.float32)
    w[:, 0, 0, 0] = 1.0
    b = np.zeros(4, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "biased", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _mean_error(fp32: Path, q: Path, xs: np.ndarray) -> float:
    samples = [{"x": x} for x in xs]
    ref = local_cpu().outputs([fp32], samples).outputs[0]["y"]
    got = local_cpu().outputs([q], samples).outputs[0]["y"]
    return float(np.abs((ref - got).mean(axis=(0, 1, 3, 4))).max())      # worst channel's mean error


def test_bias_correction_removes_the_mean_error(tmp_path: Path) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model = _biased_conv(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=np.abs(rng.normal(1, 0.3, (32, 1, 64, 4, 4))).astype(np.float32))
    src = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(model)))
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "bc.onnx"
    quantize_model(model, plain, make_config("static", "x86-vnni"), src)
    res = quantize_model(model, corrected, make_config("static", "x86-vnni", bias_correction=True), src)
    assert any("bias correction" in n and "1 layer(s)" in n for n in res.notes), res.notes
    xs = np.abs(rng.normal(1, 0.3, (16, 1, 64, 4, 4))).astype(np.float32)   # held-out inputs
    before, after = _mean_error(model, plain, xs), _mean_error(model, corrected, xs)
    assert before > 0.1                      # the planted shift: ~0.003 * 63 inputs of mean ~1
    assert after < before / 5
