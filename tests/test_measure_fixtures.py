"""Tiny ONNX models built with onnx.helper for the measurement tests (and a sanity check of them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def mlp(path: Path, *, layers: int = 1, width: int = 16, batch: int | str = 1, classes: int | None = None,
        seed: int = 0, input_name: str = "x") -> Path:
    """x[batch, width] -> (MatMul -> Relu) x layers [-> MatMul to `classes`] -> y."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur = input_name
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        cur = f"r{i}"
    out_dim = width
    if classes:
        w = rng.standard_normal((width, classes)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "wc"))
        nodes.append(helper.make_node("MatMul", [cur, "wc"], ["logits"]))
        cur, out_dim = "logits", classes
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_dim])], inits)
    return _save(graph, path)


def big_table(path: Path, megabytes: float) -> Path:
    """idx int64[1] -> Gather from a `megabytes` float32 table: memory scales with the table."""
    n = max(1, int(megabytes * 2**20 / 4))
    table = np.arange(n, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"])], "table",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(table, "table")])
    return _save(graph, path)


def test_fixture_models_load(tmp_path: Path) -> None:
    import onnxruntime as ort

    p = mlp(tmp_path / "m.onnx", layers=2, classes=4)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones((1, 16), np.float32)})
    assert y.shape == (1, 4)
