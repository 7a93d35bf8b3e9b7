"""Cross-layer equalization: a conv pair whose channel ranges differ 100x (planted), exactness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.equalization import equalize, find_pairs
from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model

C = 8


def _pair(path: Path, *, between: str = "Relu", group2: int = 1, seed: int = 0) -> Path:
    """x -> Conv1 (3x3) -> ``between`` -> Conv2 (1x1, or grouped/depthwise): output channel i of
    Conv1 is scaled by a_i (a spans 100x) and input channel i of Conv2 by 1 / a_i, so the FP32
    function is balanced but per-tensor INT8 weights see a 100x spread in both convs."""
    rng = np.random.default_rng(seed)
    a = np.logspace(0, 2, C)
    w1 = (rng.normal(0, 0.3, (C, C, 3, 3)) * a[:, None, None, None]).astype(np.float32)
    b1 = (rng.normal(0, 0.1, C) * a).astype(np.float32)
    w2 = rng.normal(0, 0.3, (C, C // group2, 1, 1))
    for ch in range(C):                     # input channel ch of a grouped conv: rows of its group, column ch % per_group
        g, j = divmod(ch, C // group2)
        w2[g * (C // group2):(g + 1) * (C // group2), j] /= a[ch]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    if between == "Relu":
        nodes.append(helper.make_node("Relu", ["c1"], ["h"], name="act"))
    elif between == "PRelu":
        inits.append(numpy_helper.from_array(np.full((C, 1, 1), 0.25, np.float32), "slope"))
        nodes.append(helper.make_node("PRelu", ["c1", "slope"], ["h"], name="act"))
    elif between == "Relu6":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c1", "lo", "hi"], ["h"], name="act"))
    elif between == "Sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["c1"], ["h"], name="act"))
    elif between == "AddConst":
        inits.append(numpy_helper.from_array(np.ones((C, 1, 1), np.float32), "shift"))
        nodes.append(helper.make_node("Add", ["c1", "shift"], ["h"], name="act"))
    nodes.append(helper.make_node("Conv", ["h" if between else "c1", "w2"], ["y"], name="conv2", group=group2))
    g = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 12, 12])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 1, C, 12, 12)).astype(np.float32)


def _outputs(model: Path, xs: np.ndarray) -> np.ndarray:
    return local_cpu().outputs([model], [{"x": x} for x in xs]).outputs[0]["y"].astype(np.float64)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


@pytest.mark.parametrize("between,group2", [("Relu", 1), ("PRelu", 1), ("", 1), ("Relu", C), ("Relu", 2)])
def test_equalization_keeps_fp32_outputs_and_balances_channels(tmp_path: Path, between: str, group2: int) -> None:
    src = _pair(tmp_path / "m.onnx", between=between, group2=group2)
    model = onnx.load(str(src))
    result = equalize(model)
    assert list(result.pairs) == ["conv1"]
    before, after = result.pairs["conv1"]
    assert before > 50 and after < before / 5
    out = tmp_path / "eq.onnx"
    onnx.save(model, str(out))
    xs = _inputs(4, 1)
    ref, got = _outputs(src, xs), _outputs(out, xs)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()


def test_decomposed_prelu_is_equalized_too(tmp_path: Path) -> None:
    from edgequant.rewrites import decompose_prelu

    model = onnx.load(str(_pair(tmp_path / "m.onnx", between="PRelu")))
    assert decompose_prelu(model) == 1                 # what the preparation path does first
    assert list(equalize(model).pairs) == ["conv1"]


def test_non_homogeneous_activations_are_refused(tmp_path: Path) -> None:
    for between in ("Sigmoid", "Relu6", "AddConst"):
        pairs, refused = find_pairs(onnx.load(str(_pair(tmp_path / f"{between}.onnx", between=between))))
        assert pairs == [] and "not positively homogeneous" in refused["conv1"]
    # ReLU6 only on request, and then it becomes Relu (not exact: the caller measures the change)
    model = onnx.load(str(tmp_path / "Relu6.onnx"))
    result = equalize(model, relu6=True)
    assert result.relu6_replaced == 1 and [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Conv"]


def test_equalization_raises_per_tensor_int8_sqnr_by_10_db(tmp_path: Path) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    src = _pair(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(32, 0))
    calib = open_source(str(tmp_path / "calib.npz"), graph_inputs(load_model(src)))
    plain, eq = tmp_path / "plain.onnx", tmp_path / "eq.onnx"
    quantize_model(src, plain, make_config("static", "x86-vnni", per_channel=False), calib)
    res = quantize_model(src, eq, make_config("static", "x86-vnni", per_channel=False, equalize=True), calib)
    note = next(n for n in res.notes if n.startswith("cross-layer equalization"))
    assert "1 pair(s)" in note and "FP32 outputs change" in note
    xs = _inputs(16, 2)                                # held-out inputs
    ref = _outputs(src, xs)
    before, after = _sqnr(ref, _outputs(plain, xs)), _sqnr(ref, _outputs(eq, xs))
    assert after >= before + 10, (before, after)
