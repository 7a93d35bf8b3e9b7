"""GPTQ weight rounding: on correlated inputs (a transformer's LayerNorm outputs, a shared level
per row here) nearest rounding's errors add up in the output and GPTQ's cancel; the grid, the
kernels and the integer range stay the quantizer's own, dynamic (MatMulInteger) and static QDQ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.gptq import gptq_integers
from edgequant.data import open_source
from edgequant.devices import local_cpu
from edgequant.errors import EdgequantError
from edgequant.measure.padding import real_positions
from edgequant.model import graph_inputs, load_model
from edgequant.quantize import make_config, quantize_model

K, N = 256, 32


def _inputs(n: int, seed: int) -> np.ndarray:
    """[n, 16, K]: each row one shared random level over its K channels, plus 20% noise."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (n, 16, 1)) + 0.2 * rng.normal(0, 1, (n, 16, K))).astype(np.float32)


def _matmul_model_proto() -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(0, 1, (K, N)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, N])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _matmul_model(path: Path) -> Path:
    onnx.save(_matmul_model_proto(), str(path))
    return path


def test_gptq_integers_cancel_the_output_error_nearest_rounding_leaves() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (K, N))
    s = np.broadcast_to(np.abs(w).max(axis=0) / 127, w.shape)
    z = np.zeros_like(w)
    x_train, x_test = (_inputs(64, seed).reshape(-1, K).astype(np.float64) for seed in (2, 3))
    q = gptq_integers(x_train.T @ x_train, w, s, z, -127, 127)
    nearest = np.clip(np.rint(w / s), -127, 127)
    assert q.min() >= -127 and q.max() <= 127 and np.array_equal(q, np.rint(q))
    assert 0.05 < np.mean(q != nearest) < 0.9                      # it really rounds differently

    def err(ints: np.ndarray) -> float:
        return float(np.mean((x_test @ w - x_test @ (s * ints)) ** 2))
    assert err(q) < 0.25 * err(nearest), (err(q), err(nearest))     # held out: >= 6 dB lower


def _quantize(model: Path, tmp: Path, name: str, mode: str, **config) -> Path:
    np.savez(tmp / "calib.npz", x=_inputs(32, 4))
    src = open_source(str(tmp / "calib.npz"), graph_inputs(load_model(model)))
    out = tmp / f"{name}.onnx"
    notes = quantize_model(model, out, make_config(mode, "x86-vnni", robust_ranges=False, **config), src).notes
    if config.get("gptq"):
        assert any(n.startswith("error-compensating rounding (GPTQ)") and "1 of 1 layer(s)" in n for n in notes), notes
    return out


def _output_mse(fp32: Path, q: Path, xs: np.ndarray) -> float:
    feeds = [{"x": x[None]} for x in xs]
    ref = local_cpu().outputs([fp32], feeds).outputs[0]["y"].astype(np.float64)
    got = local_cpu().outputs([q], feeds).outputs[0]["y"].astype(np.float64)   # onnxruntime runs it
    return float(((ref - got) ** 2).mean())


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


# static: 16-bit activations, so that the int8 weights' error is what the output shows
@pytest.mark.parametrize("mode, config", [("dynamic", {}), ("static", {"activation_type": "uint16"})])
def test_gptq_lowers_the_int8_models_error_on_the_same_grid(tmp_path: Path, mode: str, config: dict) -> None:
    model = _matmul_model(tmp_path / "m.onnx")
    nearest = _quantize(model, tmp_path, "nearest", mode, **config)
    rounded = _quantize(model, tmp_path, "gptq", mode, gptq=True, **config)
    held_out = _inputs(16, 5)
    before, after = _output_mse(model, nearest, held_out), _output_mse(model, rounded, held_out)
    assert after < 0.6 * before, (before, after)
    ops = [n.op_type for n in onnx.load(str(rounded)).graph.node]
    assert ops == [n.op_type for n in onnx.load(str(nearest)).graph.node]   # same graph, same kernels
    assert ("MatMulInteger" in ops) == (mode == "dynamic") and ("DequantizeLinear" in ops) == (mode == "static")
    a, b = _initializers(nearest), _initializers(rounded)
    ints = [k for k, v in a.items() if v.dtype == np.int8 and v.ndim == 2]
    assert len(ints) == 1
    for k in a:                                       # scales and zero points untouched, only the integers
        assert np.array_equal(a[k], b[k]) == (k not in ints), k


def test_gptq_needs_calibration_data_and_excludes_adaround(tmp_path: Path) -> None:
    model = _matmul_model(tmp_path / "m.onnx")
    with pytest.raises(EdgequantError, match="--gptq needs calibration data"):
        quantize_model(model, tmp_path / "q.onnx", make_config("dynamic", "x86-vnni", gptq=True))
    with pytest.raises(EdgequantError, match="pick one"):
        make_config("static", "x86-vnni", gptq=True, adaround=True)
    with pytest.raises(EdgequantError, match="--format qdq"):
        make_config("static", "x86-vnni", gptq=True, quant_format="qoperator")
    assert not (tmp_path / "q.onnx").exists()


def test_cli_gptq_without_calibration_is_one_error_line(tmp_path: Path) -> None:
    model = _matmul_model(tmp_path / "m.onnx")
    got = subprocess.run([sys.executable, "-m", "edgequant", "quantize", str(model), "-o", str(tmp_path / "q.onnx"),
                          "--mode", "dynamic", "--gptq"], capture_output=True, text=True, timeout=300)
    assert got.returncode == 1 and "--gptq needs calibration data" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1 and not (tmp_path / "q.onnx").exists()


def test_real_positions_follow_the_attention_mask() -> None:
    mask = np.array([[1, 1, 1, 0, 0]])
    feeds = {"input_ids": np.zeros((1, 5), np.int64), "attention_mask": mask}
    assert real_positions(feeds, (1, 5, 8)).tolist() == [True, True, True, False, False]
    assert real_positions(feeds, (5, 8)).tolist() == [True, True, True, False, False]
    assert real_positions(feeds, (1, 4, 8)) is None                       # rows are not the tokens
    assert real_positions({"attention_mask": np.ones((1, 5), np.int64)}, (1, 5, 8)) is None   # nothing padded
    assert real_positions({"x": np.ones((1, 5), np.int64)}, (1, 5, 8)) is None                 # no mask


def test_tune_tries_gptq_after_smoothquant_on_the_dynamic_default() -> None:
    from edgequant.tune.recipes import Recipe, dynamic_algorithm_recipes

    model = helper.make_model(
        helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [], []))
    got = dynamic_algorithm_recipes(Recipe("dynamic-unfused", "dynamic", fuse_transformer=False), model)
    assert [r.name for r in got] == ["dynamic-unfused+smoothquant", "dynamic-unfused+smoothquant+gptq"]
    assert [(r.smooth_quant, r.gptq) for r in got] == [(True, False), (True, True)]
    assert got[1].config("x86-vnni").gptq and "GPTQ" in got[1].summary("x86-vnni")


def test_qnn_a16w8_default_is_gptq_rounded_and_its_learned_rounding_picks_one() -> None:
    """With 16-bit activations the 8-bit weights' rounding is most of the error left, so the
    accelerator's A16W8 default rounds them with GPTQ; weight rounding variants of such a base
    swap GPTQ for AdaRound (both at once is refused) instead of repeating it."""
    from edgequant.alternatives import default_alternatives
    from edgequant.tune.recipes import default_recipes, rounding_recipes

    model = _matmul_model_proto()
    a16 = next(a for a in default_alternatives("qnn", model) if a.name == "static-a16w8")
    assert a16.config("qnn").gptq and a16.config("qnn").activation_type == "uint16"
    assert not next(a for a in default_alternatives("qnn", model) if a.name == "static").config("qnn").gptq
    recipe = next(r for r in default_recipes("qnn", model) if r.name == "static-a16w8")
    assert recipe.gptq and "GPTQ" in recipe.summary("qnn")
    variants = rounding_recipes(recipe)
    assert [r.name for r in variants] == ["static-a16w8+adaround", "static-a16w8+adaround-bc"]
    assert all(r.config("qnn").adaround and not r.config("qnn").gptq for r in variants)   # valid configs

# None: the timing picks among all alternatives (fused or unfused, depending on the machine);
# True: the fused graph, whose MatMul inputs come from contrib ops (Attention, SkipLayerNormalization)
# that ONNX's shape inference leaves untyped: the rounding must still see them
@pytest.mark.parametrize("fuse, built", [(None, 4), (True, 2)])
def test_encoder_rounds_only_the_kept_alternative_after_the_timing(tmp_path: Path, fuse: bool | None,
                                                                   built: int) -> None:
    """Rounding changes integers, never the graph or its speed: the encoder's fused/unfused/rewritten
    alternatives are timed unrounded and only the kept one is rounded, with the FP32 graph its base
    was quantized from; a kept rewrite of that base (e.g. +floored Softmax) gets the rounded integers."""
    import onnx_models

    from edgequant.qdq.transformers import quantize_encoder_dynamic
    from edgequant.quantize_steps import gptq_rounding

    src = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    mask = np.ones((24, 8), np.int64)
    mask[::2, 6:] = 0
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (24, 8, 32)).astype(np.float32), attention_mask=mask)
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    rounded: list[dict[str, np.ndarray]] = []

    def refine(float_model: Path, quantized: Path) -> str:
        before = _initializers(quantized)
        said = gptq_rounding(float_model, quantized, calib)
        rounded.append({k: v for k, v in _initializers(quantized).items() if not np.array_equal(v, before[k])})
        return said

    made = quantize_encoder_dynamic(src, tmp_path / "out.onnx", refine=refine, budget_s=1.0, fuse=fuse)
    assert len(made.built) >= built     # fused and/or unfused and their rewrites were built (and timed)
    assert len(rounded) == 1 and rounded[0], "one rounding, which changed some integers"
    assert sum("(GPTQ)" in p for p in made.summary.passes) == 1
    said = next(p for p in made.summary.passes if "(GPTQ)" in p)
    # a fused attention's packed Q/K/V weights are not rounded, and the summary says so
    assert ("QAttention" in said) == any(n.op_type == "QAttention" for n in load_model(tmp_path / "out.onnx").graph.node)
    kept = _initializers(tmp_path / "out.onnx")
    for name, ints in rounded[0].items():
        assert np.array_equal(kept[name], ints), name
