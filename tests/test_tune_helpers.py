"""Small models with a known quantization-sensitive node, for the tune and sensitivity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def sensitive_mlp(features: int = 32, hidden: int = 64, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """mm1 -> relu -> mm2 (sensitive) -> relu -> mm3 -> relu -> mm4.

    ``mm2``'s weight row 0 is 1000 while its input channel 0 is always 0 (relu of a negative
    constant): FP32 ignores the row, but 8-bit weight scales sized for 1000 round every other
    weight of mm2 to zero. The other layers quantize fine.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(features), (features, hidden))
    b1 = rng.normal(0, 0.1, hidden)
    w1[:, 0], b1[0] = 0.0, -1.0
    w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden))
    w2[0, :] = 1000.0
    w3 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden))
    w4 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes)) * 3
    # centre the logits so every class wins for some inputs (random relu nets favour one class)
    probe = rng.normal(0, 1, (512, features))
    h = np.maximum(np.maximum(np.maximum(probe @ w1 + b1, 0) @ w2, 0) @ w3, 0)
    b4 = -(h @ w4).mean(axis=0)
    layers = [("mm1", "x", w1, b1, True), ("mm2", "h1", w2, np.zeros(hidden), True),
              ("mm3", "h2", w3, np.zeros(hidden), True), ("mm4", "h3", w4, b4, False)]
    nodes, inits = [], []
    for i, (name, inp, w, b, relu) in enumerate(layers, start=1):
        inits += [_init(f"w{i}", w), _init(f"b{i}", b)]
        out = f"h{i}" if relu else "y"
        nodes.append(helper.make_node("MatMul", [inp, f"w{i}"], [f"{name}_mm"], name=name))
        nodes.append(helper.make_node("Add", [f"{name}_mm", f"b{i}"], [f"{name}_add" if relu else out], name=f"{name}_bias"))
        if relu:
            nodes.append(helper.make_node("Relu", [f"{name}_add"], [out], name=f"{name}_relu"))
    graph = helper.make_graph(nodes, "sensitive_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgequant-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# 600 evaluation samples: a 1% drop budget is decided only when the paired 95% interval of the drop
# fits under it (identical predictions need >= 381 samples); 48 left every candidate undecided
def data_for(model_path: Path, folder: Path, *, calib: int = 24, evals: int = 600, seed: int = 1,
             margin: float = 0.5) -> tuple[Path, Path]:
    """calib.npz and eval.npz (labels = FP32 arg-max, only samples with a clear top-2 margin)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    features = sess.get_inputs()[0].shape[1]
    x = rng.normal(0, 1, (calib + evals * 20, features)).astype(np.float32)
    calib_x, pool = x[:calib], x[calib:]
    y = sess.run(None, {name: pool})[0]
    top2 = np.sort(y, axis=1)[:, -2:]
    keep = np.where(top2[:, 1] - top2[:, 0] > margin)[0][:evals]
    calib_path, eval_path = folder / "calib.npz", folder / "eval.npz"
    np.savez(calib_path, **{name: calib_x})
    np.savez(eval_path, **{name: pool[keep], "labels": np.argmax(y[keep], axis=1)})
    return calib_path, eval_path
