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


def test_qnn_defaults_and_fallback_never_use_float() -> None:
    """HTP has no float path worth shipping: no dynamic default, 16-bit instead of float layers."""
    from edgequant.sensitivity import NodeSensitivity
    from edgequant.tune.recipes import Recipe, default_recipes, fallback_recipe

    names = [r.name for r in default_recipes("qnn")]
    assert names == ["static", "static-a16w8"]
    assert default_recipes("qnn")[1].config("qnn").activation_type == "uint16"
    assert [r.name for r in default_recipes("x86-vnni")] == ["dynamic", "static"]
    node = NodeSensitivity("conv", "Conv", 10.0, 30.0, 20.0, 5.0, "weights", ("conv_out",), ("conv", "relu"))
    base = Recipe("static", "static")
    no_float = fallback_recipe(base, [node], sixteen_bit=True, allow_float=False)
    assert no_float.exclude == () and no_float.int16_tensors == ("conv_out",)
    with_float = fallback_recipe(base, [node], sixteen_bit=True, allow_float=True)
    assert with_float.exclude == ("conv", "relu")          # weights-caused error: float where allowed


def test_placement_repair_recipes_carry_into_later_stages() -> None:
    """Operators the accelerator left to the CPU get uint8 weights and/or 16-bit tensors, and the
    calibration variants built on the repaired recipe keep the repair."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgequant.tune.recipes import Recipe, calibration_recipes, placement_recipes

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
         helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], name="ln", axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [numpy_helper.from_array(np.ones((8, 8), np.float32), "W"),
         numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    model = helper.make_model(graph)
    repaired = placement_recipes(Recipe("static", "static"), ["ln"], model)
    by_name = {r.name: r for r in repaired}
    assert set(by_name) == {"static+u8w", "static+a16io", "static+u8w-a16io"}
    assert by_name["static+u8w"].uint8_weights == ("g", "b") and by_name["static+u8w"].stage == "placement"
    assert by_name["static+a16io"].int16_tensors == ("a", "y")
    overrides = by_name["static+u8w"].to_dict("qnn")["extra_options"]["TensorQuantOverrides"]
    assert overrides["g"] == [{"quant_type": "QUInt8"}]
    assert all(r.uint8_weights == ("g", "b") for r in calibration_recipes("qnn", by_name["static+u8w"]))
    assert placement_recipes(Recipe("static", "static"), ["not-a-node"], model) == []


def test_algorithm_recipes_keep_every_layer_int8() -> None:
    import onnx_models

    """The ladder's 'algorithms' rung: MSE ranges for any model; equalization (+ bias correction,
    + MSE) where there are Conv pairs; SmoothQuant where MatMuls follow a LayerNorm. No float."""
    from edgequant.tune.recipes import Recipe, algorithm_recipes

    conv = onnx_models.conv_net(opset=13, channels=8, size=8)
    names = {r.name: r for r in algorithm_recipes(Recipe("static", "static", uint8_weights=("g",)), conv)}
    assert set(names) == {"static-mse", "static-equalize", "static-equalize-bc", "static-equalize-mse"}
    assert all(r.stage == "algorithms" and not r.exclude and r.uint8_weights == ("g",) for r in names.values())
    cfg = names["static-equalize-bc"].config("x86-vnni")
    assert cfg.equalize and cfg.bias_correction and cfg.calib_method == "minmax"
    assert names["static-mse"].config("qnn").calib_method == "mse"
    assert "equalized; bias-corrected" in names["static-equalize-bc"].summary("x86-vnni")
    assert [r.name for r in algorithm_recipes(Recipe("static", "static"), onnx_models.matmul_net())] == ["static-mse"]
