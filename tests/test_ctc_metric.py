"""The built-in ``ctc_agreement`` metric: greedy CTC decoding compared with labels or FP32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgequant.errors import EdgequantError
from edgequant.measure.accuracy import ctc_agreement, ctc_decode, load_metric


def _scores(paths: list[list[int]], classes: int = 5) -> np.ndarray:
    """[N, T, C] one-hot-ish scores whose arg-max follows each path."""
    out = np.zeros((len(paths), len(paths[0]), classes), np.float32)
    for i, path in enumerate(paths):
        out[i, np.arange(len(path)), path] = 1.0
    return out


def test_greedy_decoding_collapses_repeats_and_drops_the_blank() -> None:
    assert ctc_decode(_scores([[0, 1, 1, 0, 1, 2, 2, 0]])) == [(1, 1, 2)]   # blank splits the two 1s
    assert ctc_decode(_scores([[3, 3, 3, 3]])) == [(3,)]
    assert ctc_decode(_scores([[4, 1, 4, 4]]), blank=4) == [(1,)]
    assert ctc_decode(_scores([[0, 0]])) == [()]


def test_agreement_against_fp32_and_against_labels() -> None:
    fp32 = _scores([[0, 1, 2, 0], [3, 3, 0, 1], [2, 0, 2, 2]])
    int8 = _scores([[0, 1, 2, 2], [3, 0, 3, 1], [2, 0, 2, 2]])          # same, differs, same
    res = ctc_agreement({"logits": int8}, None, {"logits": fp32})
    assert res.value == pytest.approx(2 / 3) and res.higher_is_better
    assert res.details["against"] == "fp32" and res.details["char_error_rate"] == pytest.approx(1 / 6)
    labels = np.array([[1, 2, -1], [3, 3, 1], [2, -1, -1]])               # -1 pads
    assert ctc_agreement({"logits": int8}, labels, None).value == pytest.approx(2 / 3)
    assert ctc_agreement({"logits": fp32}, labels, None).value == pytest.approx(1 / 3)


def test_blank_option_and_bad_specs() -> None:
    fp32 = _scores([[4, 1, 4, 2]])
    custom = load_metric("ctc_agreement:blank=4")
    assert custom({"o": fp32}, None, {"o": fp32}).details["blank"] == 4
    with pytest.raises(EdgequantError, match="ctc_agreement:blank=N"):
        load_metric("ctc_agreement:blank=x")
    with pytest.raises(EdgequantError, match=r"\[N, T, C\]"):
        ctc_agreement({"o": np.zeros((3, 5))}, None, {"o": np.zeros((3, 5))})
    with pytest.raises(EdgequantError, match="labels or an FP32 reference"):
        ctc_agreement({"o": fp32}, None, None)


def test_eval_judges_a_recognizer_by_decoded_sequences(tmp_path: Path) -> None:
    """End to end: a [1, T, C] recognizer evaluated against its FP32 self with --metric ctc_agreement."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgequant import api

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["probs"], axis=-1)],
        "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 20, 12])],
        [numpy_helper.from_array(rng.normal(0, 1, (16, 12)).astype(np.float32), "W")])
    model = tmp_path / "rec.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    data = tmp_path / "lines.npz"
    np.savez(data, x=rng.normal(0, 1, (10, 1, 20, 16)).astype(np.float32))
    res = api.evaluate(model, str(data), reference=model, metric="ctc_agreement")
    assert res.accuracy["metric"] == "ctc_agreement" and res.accuracy["value"] == 1.0
