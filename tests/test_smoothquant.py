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
    site = res.sites["h"]
    assert not site.explicit and site.gain_db > 3
    assert site.ratio_before > 20 and site.ratio_after < site.ratio_before / 4
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
    assert any(n.startswith("SmoothQuant") and "of 2 activation(s)" in n for n in res.notes), res.notes
    xs = _inputs(16, 2)                                          # held-out inputs
    ref = _y(src, xs)
    sqnr = {name: 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - _y(m, xs)) ** 2))
            for name, m in (("plain", plain), ("smooth", smooth))}
    assert sqnr["smooth"] >= sqnr["plain"] + 10, sqnr


def _post_ln_residual(path: Path, *, outliers: bool = True, seed: int = 0) -> Path:
    """x -> LayerNorm -> h; y = h + (h W) W2, as in a post-LN BERT block: the residual Add also reads h,
    so the LayerNorm cannot absorb 1 / s. Outlier channels as in :func:`_ln_linear` (or none)."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(K, np.float32)
    w = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    if outliers:
        gamma[[3, 40]] = 50.0
        w[[3, 40]] /= 50.0
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (gamma, "gamma"), (rng.normal(0, 0.1, K).astype(np.float32), "beta"), (w, "w"),
        (rng.normal(0, 0.2, (N, K)).astype(np.float32), "w2"))]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["hw"], name="fc1"),
             helper.make_node("MatMul", ["hw", "w2"], ["f"], name="fc2"),
             helper.make_node("Add", ["h", "f"], ["y"], name="residual")]
    g = helper.make_graph(nodes, "post_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, K])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_post_ln_outliers_are_smoothed_by_an_added_mul_in_dynamic_mode(tmp_path: Path) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    src = _post_ln_residual(tmp_path / "m.onnx")
    assert "h" not in {s.x for s in find_sites(onnx.load(str(src)))}          # the residual reads h too
    assert "h" in {s.x for s in find_sites(onnx.load(str(src)), explicit=True)}
    np.savez(tmp_path / "calib.npz", x=_inputs(32, 0))
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    fp32_smoothed = tmp_path / "s.onnx"
    res = smooth_file(src, fp32_smoothed, calib, local_cpu(), dynamic=True)
    assert res.sites["h"].explicit and res.sites["h"].gain_db > 3
    muls = [n for n in onnx.load(str(fp32_smoothed)).graph.node if n.op_type == "Mul"]
    assert len(muls) == 1 and muls[0].input[0] == "h"
    residual = next(n for n in onnx.load(str(fp32_smoothed)).graph.node if n.name == "residual")
    assert "h" in residual.input                                               # the residual still reads h
    xs = _inputs(16, 2)
    ref = _y(src, xs)
    assert np.abs(ref - _y(fp32_smoothed, xs)).max() <= 1e-4 * np.abs(ref).max()   # exact in FP32

    plain, smooth = tmp_path / "plain.onnx", tmp_path / "sq.onnx"
    quantize_model(src, plain, make_config("dynamic", "x86-vnni"), calib)
    got = quantize_model(src, smooth, make_config("dynamic", "x86-vnni", smooth_quant=True), calib)
    assert any(n.startswith("SmoothQuant") and "added Mul" in n for n in got.notes), got.notes
    sqnr = {name: 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - _y(m, xs)) ** 2))
            for name, m in (("plain", plain), ("smooth", smooth))}
    assert sqnr["smooth"] >= sqnr["plain"] + 3, sqnr


def test_a_site_no_strength_helps_is_left_alone(tmp_path: Path) -> None:
    """Without outlier channels, s_k is nearly one constant: the simulated error barely moves, so no
    Mul is added for h (it would cost a pass for nothing); a fold into fc1 costs nothing and may stay."""
    src = _post_ln_residual(tmp_path / "m.onnx", outliers=False)
    out = tmp_path / "s.onnx"
    res = smooth_file(src, out, [{"x": x} for x in _inputs(8, 0)], local_cpu(), dynamic=True)
    assert res.candidates >= 1 and "h" not in res.sites
    assert not any(site.explicit for site in res.sites.values())
    assert not any(n.op_type == "Mul" for n in onnx.load(str(out)).graph.node)


def test_dynamic_smoothquant_needs_calibration_data(tmp_path: Path) -> None:
    from edgequant.errors import EdgequantError

    src = _post_ln_residual(tmp_path / "m.onnx")
    with pytest.raises(EdgequantError, match="calibration"):
        quantize_model(src, tmp_path / "q.onnx", make_config("dynamic", "x86-vnni", smooth_quant=True))


def test_a_pooled_nchw_activation_flattened_into_a_classifier_is_not_a_site(tmp_path: Path) -> None:
    """A CNN head: GlobalAveragePool's [1, C, 1, 1] output reshaped to [1, C] for the classifier Gemm.
    The Reshape keeps C last, but the site tensor itself has C on axis 1, not last: smoothing it
    along its last axis (size 1) used to crash the strength search (mobilenet_v3_small, tune's
    dynamic+smoothquant candidate). It is left alone, and the model still quantizes."""
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    rng = np.random.default_rng(0)
    c, n = 16, 8
    w = rng.normal(0, 0.3, (n, c)).astype(np.float32)
    w[:, 3] *= 20                                                          # an outlier channel to tempt it
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(np.array([1, c], np.int64), "shape"),
                               numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(n, np.float32), "b")])
    src = tmp_path / "head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    x = rng.normal(0, 1, (16, 1, c, 4, 4)).astype(np.float32)
    x[:, :, 5] *= 30
    np.savez(tmp_path / "calib.npz", x=x)
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    res = smooth_file(src, tmp_path / "s.onnx", calib, local_cpu(), dynamic=True)
    assert "pooled" not in res.sites
    quantize_model(src, tmp_path / "q.onnx", make_config("dynamic", "x86-vnni", smooth_quant=True), calib)
    assert (tmp_path / "q.onnx").exists()
