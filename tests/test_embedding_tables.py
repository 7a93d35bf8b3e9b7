"""Embedding tables re-quantized per column after onnxruntime's dynamic quantizer (one scale per table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant.devices import local_cpu
from edgequant.qdq.embedding_tables import per_column_tables

VOCAB, DIM, SEQ = 200, 32, 12


def _embedding_model(path: Path) -> Path:
    """ids -> Gather(table) -> + position table -> y; column 5 of the position table is 40x the rest,
    as the HF BertModel's position embeddings have outlier hidden dimensions."""
    rng = np.random.default_rng(0)
    words = rng.normal(0, 0.05, (VOCAB, DIM)).astype(np.float32)
    positions = rng.normal(0, 0.05, (SEQ, DIM)).astype(np.float32)
    positions[:, 5] *= 40.0
    nodes = [helper.make_node("Gather", ["words", "ids"], ["w"], name="word_gather"),
             helper.make_node("Gather", ["positions", "pos_ids"], ["p"], name="pos_gather"),
             helper.make_node("Add", ["w", "p"], ["y"])]
    g = helper.make_graph(
        nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, SEQ])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, DIM])],
        [numpy_helper.from_array(words, "words"), numpy_helper.from_array(positions, "positions"),
         numpy_helper.from_array(np.arange(SEQ, dtype=np.int64)[None], "pos_ids")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def test_per_column_tables_keep_outlier_columns_and_the_int8_gather(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    src = _embedding_model(tmp_path / "emb.onnx")
    per_tensor = tmp_path / "per_tensor.onnx"
    quantize_dynamic(str(src), str(per_tensor), op_types_to_quantize=["Gather"])
    model = onnx.load(str(per_tensor))
    assert sorted(per_column_tables(model, onnx.load(str(src)))) == ["positions", "words"]
    per_column = tmp_path / "per_column.onnx"
    onnx.save(model, str(per_column))

    names = {t.name for t in model.graph.initializer}
    assert "positions_quantized" not in names and "words_quantized" not in names     # no second copy
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and all(helper.get_attribute_value(n.attribute[0]) == -1 for n in dqs)
    gathers = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    assert gathers == {"words_per_column_quantized", "positions_per_column_quantized"}   # still an int8 lookup

    ids = np.random.default_rng(1).integers(0, VOCAB, (8, 1, SEQ))
    out = local_cpu().outputs([src, per_tensor, per_column], [{"ids": i} for i in ids]).outputs
    ref, tensor_wise, column_wise = (o["y"].astype(np.float64) for o in out)
    assert _sqnr(ref, column_wise) >= _sqnr(ref, tensor_wise) + 10


def test_a_table_without_its_float_original_is_left_alone(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    src = _embedding_model(tmp_path / "emb.onnx")
    q = tmp_path / "q.onnx"
    quantize_dynamic(str(src), str(q), op_types_to_quantize=["Gather"])
    model = onnx.load(str(q))
    before = model.SerializeToString()
    empty = helper.make_model(helper.make_graph([], "none", [], []))
    assert per_column_tables(model, empty) == [] and model.SerializeToString() == before
