"""SmoothQuant migration: a LayerNorm whose output has two 50x outlier channels (planted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.smoothquant import find_sites, smooth_file
from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model

T, K, N = 16, 64, 32


def _ln_linear(path: Path, *, decomposed: bool = False, seed: int = 0) -> Path:
    """x -> LayerNorm (gamma 50 on channels 3 and 40: the outliers) -> MatMul W -> Add b -> z -> MatMul
    -> y. W's rows for the outlier channels are 50x smaller (as trained transformers learn), so every
    channel matters to the output and one activation scale for all of them costs the others."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(K, np.float32)
    gamma[[3, 40]] = 50.0
    beta = rng.normal(0, 0.1, K).astype(np.float32)
    w = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    w[[3, 40]] /= 50.0
    w2 = rng.normal(0, 0.2, (N, N)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((gamma, "gamma"), (beta, "beta"), (w, "w"),
                                                        (rng.normal(0, 0.1, N).astype(np.float32), "b"), (w2, "w2"))]
    if decomposed:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
                 helper.make_node("Sub", ["x", "mu"], ["xc"]),
                 helper.make_node("Mul", ["xc", "xc"], ["sq"]),
                 helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
                 helper.make_node("Sqrt", ["var"], ["sd"]),
                 helper.make_node("Div", ["xc", "sd"], ["xh"]),
                 helper.make_node("Mul", ["xh", "gamma"], ["xg"]),
                 helper.make_node("Add", ["xg", "beta"], ["h"])]
        inits.pop()
    else:
        nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1)]
    nodes += [helper.make_node("MatMul", ["h", "w"], ["hw"], name="fc1"),
              helper.make_node("Add", ["hw", "b"], ["z"]),
              helper.make_node("MatMul", ["z", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, N])], inits)
    opset = 13 if decomposed else 17
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 1, T, K)).astype(np.float32)


def _y(model: Path, xs: np.ndarray) -> np.ndarray:
    return local_cpu().outputs([model], [{"x": x} for x in xs]).outputs[0]["y"].astype(np.float64)


@pytest.mark.parametrize("decomposed", [False, True])
def test_smoothing_is_exact_and_flattens_the_outlier_channels(tmp_path: Path, decomposed: bool) -> None:
    src = _ln_linear(tmp_path / "m.onnx", decomposed=decomposed)
    assert {s.x for s in find_sites(onnx.load(str(src)))} == {"h", "z"}   # LayerNorm and fc1 (+ bias) fold
    out = tmp_path / "s.onnx"
    res = smooth_file(src, out, [{"x": x} for x in _inputs(8, 0)], local_cpu())
    before, after = res.sites["h"]
    assert before > 20 and after < before / 4
    xs = _inputs(4, 1)
    ref, got = _y(src, xs), _y(out, xs)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()


def test_smoothquant_raises_int8_sqnr_with_outlier_channels(tmp_path: Path) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    src = _ln_linear(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(32, 0))
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    plain, smooth = tmp_path / "plain.onnx", tmp_path / "sq.onnx"
    quantize_model(src, plain, make_config("static", "x86-vnni"), calib)
    res = quantize_model(src, smooth, make_config("static", "x86-vnni", smooth_quant=True), calib)
    assert any(n.startswith("SmoothQuant") and "2 activation(s)" in n for n in res.notes), res.notes
    xs = _inputs(16, 2)                                          # held-out inputs
    ref = _y(src, xs)
    sqnr = {name: 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - _y(m, xs)) ** 2))
            for name, m in (("plain", plain), ("smooth", smooth))}
    assert sqnr["smooth"] >= sqnr["plain"] + 10, sqnr
