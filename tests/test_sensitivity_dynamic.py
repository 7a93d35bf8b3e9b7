"""tune's dynamic fallback ranks weight MatMuls by how much per-call uint8 quantization of their
input loses: a long-tailed input (GELU outputs in a transformer's FFN) comes first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant.data import open_source
from edgequant.model import graph_inputs
from edgequant.sensitivity_dynamic import rank_dynamic_inputs


def test_the_long_tailed_input_ranks_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = [numpy_helper.from_array(rng.standard_normal((256, 8)).astype(np.float32), f"w{i}") for i in range(2)]
    boost = np.ones(256, np.float32)
    boost[:2] = 30.0                                                  # two outlier channels, as GELU outputs have
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="plain"),
             helper.make_node("Mul", ["x", "boost"], ["tail"]),
             helper.make_node("MatMul", ["tail", "w1"], ["b"], name="long_tailed"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])],
                              [*w, numpy_helper.from_array(boost, "boost")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 16, 256)).astype(np.float32))
    source = open_source(str(tmp_path / "calib.npz"), graph_inputs(model))
    ranked = rank_dynamic_inputs(tmp_path / "m.onnx", source)
    assert [name for name, _ in ranked] == ["long_tailed", "plain"]
    assert ranked[0][1] + 10 < ranked[1][1]            # far fewer effective bits
    assert 35 < ranked[1][1] < 50                       # a Gaussian over 8 bits: about 40 dB
