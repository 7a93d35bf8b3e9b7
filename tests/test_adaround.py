"""Learned rounding (AdaRound): planted layers whose nearest rounding errors all point one way on
correlated inputs, so rounding some weights the other way cancels them; im2col geometry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.weight_layers import WeightLayer as _Layer
from edgequant.algorithms.weight_layers import _columns
from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model

STEP = 0.01   # every weight tensor's largest value is 1.27 = 127 steps: int8 symmetric scale 0.01


def _half_step_weights(shape: tuple[int, ...], rng: np.random.Generator, axis: int = 0) -> np.ndarray:
    """k + 0.45 steps (nearest rounds every one down: errors add up on correlated inputs), one
    weight per output channel at 1.27 so per-channel and per-tensor scales are both 0.01."""
    w = STEP * (rng.integers(-40, 40, shape) + 0.45)
    first = [slice(None)] * len(shape)
    for ch in range(shape[axis]):
        first[axis] = ch
        w[tuple(first)].flat[0] = 1.27
    return w.astype(np.float32)


def _save(path: Path, nodes, inputs, outputs, inits) -> Path:
    g = helper.make_graph(nodes, "planted", inputs, outputs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _planted_gemm(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = _half_step_weights((16, 64), rng)                               # Gemm transB: [out, in]
    return _save(path, [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                 [numpy_helper.from_array(w, "w")])


def _gemm_inputs(n: int, seed: int) -> np.ndarray:
    """16 rows per sample, every row's 64 values one shared random level plus 10% noise."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (n, 16, 1)) + 0.1 * rng.normal(0, 1, (n, 16, 64))).astype(np.float32)


def _planted_convs(path: Path) -> Path:
    """Grouped 3x3 conv (2 groups) -> depthwise 3x3 conv (stride 2, dilation 2), both planted."""
    rng = np.random.default_rng(1)
    w1, w2 = _half_step_weights((8, 2, 3, 3), rng), _half_step_weights((8, 1, 3, 3), rng)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="grouped", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["y"], name="depthwise", group=8, pads=[2, 2, 2, 2],
                              strides=[2, 2], dilations=[2, 2])]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
                 [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def _conv_inputs(n: int, seed: int, *, extremes: bool = False) -> np.ndarray:
    """Each channel one random level in [-1, 1] over the image plus 5% noise: a kernel's taps see
    the same value. ``extremes``: levels -1 and 1 first, so calibrated ranges cover held-out inputs
    (their clipping would otherwise hide the weights' error)."""
    rng = np.random.default_rng(seed)
    levels = rng.uniform(-1, 1, (n, 1, 4, 1, 1))
    if extremes:
        levels[:2] = [[[[[-1.0]]]], [[[[1.0]]]]]
    return (levels + 0.05 * rng.normal(0, 1, (n, 1, 4, 12, 12))).astype(np.float32)


def _quantize_both(model: Path, xs: np.ndarray, tmp: Path, **config) -> tuple[Path, Path, list[str]]:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    np.savez(tmp / "calib.npz", x=xs)
    src = open_source(str(tmp / "calib.npz"), graph_inputs(load_model(model)))
    nearest, learned = tmp / "nearest.onnx", tmp / "adaround.onnx"
    quantize_model(model, nearest, make_config("static", "x86-vnni", robust_ranges=False, **config), src)
    res = quantize_model(model, learned, make_config("static", "x86-vnni", robust_ranges=False, adaround=True,
                                                     **config), src)
    return nearest, learned, res.notes


def _output_mse(fp32: Path, q: Path, xs: np.ndarray) -> float:
    feeds = [{"x": x} for x in xs]
    ref = local_cpu().outputs([fp32], feeds).outputs[0]["y"].astype(np.float64)
    got = local_cpu().outputs([q], feeds).outputs[0]["y"].astype(np.float64)   # onnxruntime runs it
    return float(((ref - got) ** 2).mean())


def _integer_weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.int32) for t in onnx.load(str(path)).graph.initializer
            if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) >= 2}   # not zero points


def _check_up_or_down(nearest: Path, learned: Path, layers: int) -> None:
    """Every weight moved at most one step, and each layer's rounding really changed."""
    before, after = _integer_weights(nearest), _integer_weights(learned)
    assert len(before) == layers and before.keys() == after.keys()
    for name in before:
        diff = np.abs(after[name] - before[name])
        assert diff.max() == 1, name                      # up or down, and not a no-op
        assert 0.05 < (diff > 0).mean() < 0.95, name


@pytest.mark.parametrize("per_channel", [True, False])
def test_learned_rounding_beats_nearest_on_a_planted_gemm(tmp_path: Path, per_channel: bool) -> None:
    model = _planted_gemm(tmp_path / "m.onnx")
    nearest, learned, notes = _quantize_both(model, _gemm_inputs(32, 1), tmp_path, per_channel=per_channel)
    assert any(n.startswith("learned rounding (AdaRound)") and "1 of 1 layer(s)" in n for n in notes), notes
    held_out = _gemm_inputs(32, 2)
    before, after = _output_mse(model, nearest, held_out), _output_mse(model, learned, held_out)
    assert after <= 0.8 * before, (before, after)          # planted: ~98% lower
    _check_up_or_down(nearest, learned, layers=1)


def test_learned_rounding_on_grouped_and_depthwise_convs(tmp_path: Path) -> None:
    model = _planted_convs(tmp_path / "m.onnx")
    nearest, learned, notes = _quantize_both(model, _conv_inputs(24, 1, extremes=True), tmp_path)
    assert any("2 of 2 layer(s)" in n for n in notes), notes
    held_out = _conv_inputs(16, 2)
    before, after = _output_mse(model, nearest, held_out), _output_mse(model, learned, held_out)
    assert after <= 0.8 * before, (before, after)
    _check_up_or_down(nearest, learned, layers=2)


def test_bias_correction_runs_on_the_learned_rounding(tmp_path: Path) -> None:
    model = _planted_convs(tmp_path / "m.onnx")
    _, _, notes = _quantize_both(model, _conv_inputs(8, 1), tmp_path, bias_correction=True)
    assert [n.split(":")[0] for n in notes if n.startswith(("learned rounding", "bias correction"))] == \
        ["learned rounding (AdaRound)", "bias correction"]


@pytest.mark.parametrize("attrs, dims", [
    ({"group": 2, "pads": [1, 0, 2, 1], "strides": [2, 1]}, (8, 2, 3, 3)),
    ({"group": 4, "dilations": [2, 3], "pads": [2, 1, 1, 3], "strides": [2, 2]}, (4, 1, 3, 3)),
    ({"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 1, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [3, 3]}, (6, 4, 2, 2)),
    ({"auto_pad": "VALID", "strides": [2]}, (6, 4, 3)),                                   # 1-D conv
])
def test_im2col_columns_reproduce_the_conv(attrs: dict, dims: tuple[int, ...]) -> None:
    """Columns at sampled output positions times the weights give onnxruntime's Conv output there."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, dims).astype(np.float32)
    spatial = [11, 10][: len(dims) - 2]
    x = rng.normal(0, 1, (2, 4, *spatial)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], "c",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    one = np.ones(1)
    layer = _Layer("c", "Conv", "x", "x", "w", w.astype(np.float64), one, one, w, 0, 0,
                   {k: v.encode() if isinstance(v, str) else v for k, v in attrs.items()})
    per_sample = y.reshape(2, dims[0], -1)                                               # [N, Cout, positions]
    total = per_sample.shape[0] * per_sample.shape[2]
    pos = np.sort(rng.choice(total, min(17, total), replace=False))
    got = _columns(layer, x, pos) @ layer.to_mat(w.astype(np.float64))                  # [G, P, Cout/G]
    n, p = np.divmod(pos, per_sample.shape[2])
    want = per_sample[n, :, p]                                                           # [P, Cout]
    np.testing.assert_allclose(got.transpose(1, 0, 2).reshape(len(pos), -1), want, rtol=1e-4, atol=1e-4)


def test_cli_adaround_and_its_static_only_error(tmp_path: Path) -> None:
    model = _planted_gemm(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_gemm_inputs(8, 1))

    def edgequant(*args):
        return subprocess.run([sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True,
                              timeout=600)

    ok = edgequant("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--calib",
                   tmp_path / "calib.npz", "--adaround")
    assert ok.returncode == 0, ok.stderr
    assert "learned rounding (AdaRound)" in ok.stderr and (tmp_path / "q.onnx").is_file()
    bad = edgequant("quantize", model, "-o", tmp_path / "d.onnx", "--mode", "dynamic", "--adaround")
    assert bad.returncode == 1 and "--adaround" in bad.stderr and "--mode static" in bad.stderr, bad.stderr
    assert not (tmp_path / "d.onnx").exists()


def test_tune_tries_learned_rounding_on_the_best_static_recipe() -> None:
    from edgequant.tune.recipes import Recipe, rounding_recipes

    base = Recipe("static-equalize", "static", stage="algorithms", equalize=True, uint8_weights=("g",))
    got = {r.name: r for r in rounding_recipes(base)}
    assert set(got) == {"static-equalize+gptq", "static-equalize+adaround", "static-equalize+adaround-bc"}
    assert all(r.stage == "learned rounding" and r.equalize and r.uint8_weights == ("g",) for r in got.values())
    assert got["static-equalize+gptq"].gptq and not got["static-equalize+gptq"].adaround   # one rounding each
    assert not any(r.gptq for n, r in got.items() if "adaround" in n)
    cfg = got["static-equalize+adaround-bc"].config("x86-vnni")
    assert cfg.adaround and cfg.bias_correction and cfg.equalize
    assert "equalized; AdaRound; bias-corrected" in got["static-equalize+adaround-bc"].summary("x86-vnni")
    assert rounding_recipes(Recipe("dynamic", "dynamic")) == []
