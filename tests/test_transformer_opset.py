"""Regression: dynamic quantization of an opset-12 encoder with a decomposed LayerNorm.

ORT's transformer fusion emits ai.onnx LayerNormalization (opset >= 17) into the model; when the
model was only upgraded to opset 13 the result was invalid and onnxruntime refused it
("No Op registered for LayerNormalization with domain_version of 13").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant import api


def _encoder_block_opset12(path: Path, d: int = 16, t: int = 8) -> Path:
    rng = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [init("eps", 1e-5), init("two", 2.0), init("gamma", rng.normal(1, 0.1, d)), init("beta", rng.normal(0, 0.1, d)),
             *(init(w, rng.normal(0, 0.3, (d, d))) for w in ("wq", "wk", "wv", "wo")), init("scale", 0.25)]
    n = helper.make_node
    nodes = [  # LayerNorm spelled out (ReduceMean/Sub/Pow/Sqrt/Div), then one attention head
        n("ReduceMean", ["x"], ["mu"], axes=[-1]), n("Sub", ["x", "mu"], ["xc"]), n("Pow", ["xc", "two"], ["sq"]),
        n("ReduceMean", ["sq"], ["var"], axes=[-1]), n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
        n("Div", ["xc", "sd"], ["xn"]), n("Mul", ["xn", "gamma"], ["xg"]), n("Add", ["xg", "beta"], ["ln"]),
        n("MatMul", ["ln", "wq"], ["q"]), n("MatMul", ["ln", "wk"], ["k"]), n("MatMul", ["ln", "wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["s"]), n("Mul", ["s", "scale"], ["ss"]),
        n("Softmax", ["ss"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["a"]), n("MatMul", ["a", "wo"], ["y"])]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, t, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_opset12_encoder_fuses_at_opset17_and_stays_valid(tmp_path: Path) -> None:
    model = _encoder_block_opset12(tmp_path / "enc12.onnx")
    out = tmp_path / "enc.dyn.onnx"
    res = api.quantize(model, out, mode="dynamic", fuse_transformer=True)
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    ops = {node.op_type for node in q.graph.node}
    assert "LayerNormalization" in ops and {"DynamicQuantizeLinear", "MatMulInteger"} & ops
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert any("upgrade_opset(13->17)" in n for n in res.notes)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).normal(0, 1, (8, 1, 8, 16)).astype(np.float32))
    ev = api.evaluate(out, str(data), reference=model)
    assert ev.fidelity.cosine > 0.999
