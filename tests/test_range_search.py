"""MSE range search: the closed-form error model, and a tensor with rare outliers (planted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.range_search import _Stats, candidate_errors, grid_of
from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model

C, HW = 4, 32


def test_histogram_error_matches_quantizing_every_value() -> None:
    """Streamed statistics (histogram, zeros, tails beyond the base range) give the exact MSE."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.laplace(0.3, 1, 50000), np.maximum(rng.normal(0, 1, 50000), 0), [40.0, -30.0]])
    stats = _Stats(-6.0, 12.0)                                   # narrower than the data: tails are used
    for chunk in np.array_split(x, 7):
        stats.add(chunk)
    rmin, rmax = np.array([-6.0, -3.0, -0.3]), np.array([12.0, 7.2, 0.24])
    est = candidate_errors(stats, rmin, rmax, 0, 255)
    scale, _, _ = grid_of(rmin, rmax, 0, 255)
    for i in range(3):
        zp = np.round(-rmin[i] / scale[i])
        q = np.clip(np.round(x / scale[i]) + zp, 0, 255)
        assert est[i] == pytest.approx(np.sum(((q - zp) * scale[i] - x) ** 2), rel=1e-3)


def _identity_conv(path: Path) -> Path:
    """y = Conv1x1(x) with identity weights: the only error left is the activations' rounding."""
    w = np.eye(C, dtype=np.float32).reshape(C, C, 1, 1)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, HW, HW])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _rare_outliers(n: int, seed: int) -> np.ndarray:
    """N(0, 1) with 0.1% of the values drawn 20x wider: min/max spends the grid on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, C, HW, HW))
    wide = rng.random(x.shape) < 1e-3
    x[wide] = rng.normal(0, 20, int(wide.sum()))
    return x.astype(np.float32)


def test_mse_ranges_beat_minmax_on_a_tensor_with_rare_outliers(tmp_path: Path) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    src = _identity_conv(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_rare_outliers(32, 0))
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    xs = _rare_outliers(16, 1)                                   # held-out inputs
    feeds = [{"x": x} for x in xs]
    ref = local_cpu().outputs([src], feeds).outputs[0]["y"].astype(np.float64)
    sqnr, notes = {}, {}
    for method in ("minmax", "mse"):
        out = tmp_path / f"{method}.onnx"
        res = quantize_model(src, out, make_config("static", "x86-vnni", calib_method=method, robust_ranges=False), calib)
        notes[method] = res.notes
        got = local_cpu().outputs([out], feeds).outputs[0]["y"].astype(np.float64)
        sqnr[method] = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert any(n.startswith("MSE range search") and "narrowed" in n for n in notes["mse"]), notes["mse"]
    assert sqnr["mse"] >= sqnr["minmax"] + 0.5, sqnr


def _quiet_channel_conv(path: Path) -> Path:
    """y = Conv1x1(x): channel 0 of x carries the wide values but the conv reads it 50x more weakly."""
    w = np.eye(C, dtype=np.float32).reshape(C, C, 1, 1)
    w[:, 0] *= 0.02
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "quiet",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, HW, HW])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _wide_channel(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, 1, C, HW, HW))
    x[:, :, 0] *= 20
    return x.astype(np.float32)


def test_ranges_judged_by_the_readers_output_clip_what_the_reader_barely_uses(tmp_path: Path, monkeypatch) -> None:
    from edgequant.algorithms import range_search
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    src = _quiet_channel_conv(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_wide_channel(16, 0))
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    feeds = [{"x": x} for x in _wide_channel(8, 1)]
    ref = local_cpu().outputs([src], feeds).outputs[0]["y"].astype(np.float64)
    sqnr = {}
    for weighted in (False, True):
        monkeypatch.setattr(range_search, "CONSUMER_WEIGHTED", weighted)
        out = tmp_path / f"{weighted}.onnx"
        quantize_model(src, out, make_config("static", "x86-vnni", calib_method="mse", robust_ranges=False), calib)
        got = local_cpu().outputs([out], feeds).outputs[0]["y"].astype(np.float64)
        sqnr[weighted] = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr[True] >= sqnr[False] + 3, sqnr
