"""Float Softmax inputs floored at row max - 64 (edgequant.rewrites.floor_softmax_inputs): the
outputs stay the same to float32 rounding, masked scores included, and only the Softmaxes whose
meaning allows it are touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_models
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgequant.rewrites import SOFTMAX_FLOOR, floor_softmax_inputs

RNG = np.random.default_rng(5)
SHAPE = [1, 4, 16, 16]


def _masked_softmax(opset: int, *, axis: int | None = None, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """scores [1, 4, 16, 16] + mask bias [1, 1, 1, 16] -> Softmax (what an attention block does)."""
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("Add", ["scores", "bias"], ["x"]),
             helper.make_node("Softmax", ["x"], ["p"], **attrs)]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("scores", dtype, SHAPE),
                                              helper.make_tensor_value_info("bias", dtype, [1, 1, 1, 16])],
                              [helper.make_tensor_value_info("p", dtype, SHAPE)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("mask_value", [-10000.0, float(np.finfo(np.float32).min)])
def test_outputs_do_not_change_with_masked_keys(opset: int, mask_value: float) -> None:
    model = _masked_softmax(opset)
    scores = (RNG.standard_normal(SHAPE) * 8).astype(np.float32)
    bias = np.where(np.arange(16) < 5, 0.0, mask_value).astype(np.float32).reshape(1, 1, 1, 16)
    feeds = {"scores": scores, "bias": bias}
    before = _run(model, feeds)
    assert floor_softmax_inputs(model) == 1
    onnx.checker.check_model(model)
    after = _run(model, feeds)
    assert np.array_equal(after[..., :5], before[..., :5])
    assert np.abs(after - before).max() < 1e-20        # masked keys: 0 before, < e^-64 after
    assert "ReduceMax" in {n.op_type for n in model.graph.node}


def test_scores_within_the_floor_are_untouched() -> None:
    """Rows whose entries all lie within 64 of their maximum compute exactly as before."""
    model = _masked_softmax(17)
    scores = (RNG.uniform(-30, 30, SHAPE)).astype(np.float32)
    feeds = {"scores": scores, "bias": np.zeros((1, 1, 1, 16), np.float32)}
    before = _run(model, feeds)
    floor_softmax_inputs(model)
    assert np.array_equal(_run(model, feeds), before)


def test_a_far_entry_is_raised_to_the_floor_and_weighs_almost_nothing() -> None:
    model = _masked_softmax(17)
    floor_softmax_inputs(model)
    scores = np.zeros(SHAPE, np.float32)
    scores[..., 0] = 1000.0                     # every other entry lies 1000 below the row maximum
    p = _run(model, {"scores": scores, "bias": np.zeros((1, 1, 1, 16), np.float32)})
    assert np.allclose(p[..., 1:], np.exp(-SOFTMAX_FLOOR), rtol=1e-5)
    assert np.all(p[..., 0] == 1.0)


def test_softmax_over_flattened_axes_and_half_precision_are_left_alone() -> None:
    # before opset 13 Softmax(axis=1) normalizes over all axes from 1 on: a row max is not that
    assert floor_softmax_inputs(_masked_softmax(11, axis=1)) == 0
    assert floor_softmax_inputs(_masked_softmax(11, axis=-1)) == 1
    assert floor_softmax_inputs(_masked_softmax(17, dtype=TensorProto.FLOAT16)) == 0


def test_dynamic_encoder_times_the_floored_graphs_too(tmp_path: Path) -> None:
    from edgequant.quantize import make_config, quantize_model

    src = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    res = quantize_model(src, tmp_path / "bert.dyn.onnx", make_config("dynamic", "x86-vnni", fuse_transformer=False))
    note = next(n for n in res.notes if n.startswith("transformer encoder:"))
    assert "unfused+floored Softmax " in note and "unfused+Add/LayerNorm+floored Softmax " in note


def test_fp32_opt_carries_the_floor(tmp_path: Path) -> None:
    from edgequant.pipeline import fp32_rewrite_candidate

    model = onnx_models.bert_layers()
    src = onnx_models.save(model, tmp_path / "bert.onnx")
    (cand,) = fp32_rewrite_candidate(src, model, tmp_path, target="x86-vnni")
    assert any("Softmax inputs" in n for n in cand.notes)
    ops = [n.op_type for n in onnx.load(str(cand.path)).graph.node]
    assert ops.count("ReduceMax") == ops.count("Softmax") > 0
    assert fp32_rewrite_candidate(src, model, tmp_path, target="qnn") == []   # an NPU compiles its own graph


def test_dynamic_quantize_times_on_the_callers_data(tmp_path: Path) -> None:
    """``quantize --mode dynamic --calib SRC``: the data is read (its first sample feeds the quick
    timing, e.g. padded tokens), so a source that does not fit the model is an error, not ignored."""
    from edgequant import api
    from edgequant.errors import EdgequantError

    src = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    np.savez(tmp_path / "wrong.npz", not_an_input=np.zeros((2, 8), np.float32))
    with pytest.raises(EdgequantError, match="wrong.npz"):
        api.quantize(src, tmp_path / "a.onnx", mode="dynamic", calib=str(tmp_path / "wrong.npz"))
    res = api.quantize(src, tmp_path / "b.onnx", mode="dynamic")       # no data: random inputs time it
    note = next(n for n in res.notes if n.startswith("transformer encoder:"))
    assert "half of the positions padded" in note
    mask = np.ones((1, 16), np.int64)
    mask[:, 8:] = 0
    np.savez(tmp_path / "padded.npz", x=RNG.standard_normal((1, 16, 32)).astype(np.float32), attention_mask=mask)
    res = api.quantize(src, tmp_path / "c.onnx", mode="dynamic", calib=str(tmp_path / "padded.npz"))
    note = next(n for n in res.notes if n.startswith("transformer encoder:"))
    assert "quick timing" in note and "masks attend everywhere" not in note
