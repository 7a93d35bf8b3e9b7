"""qdq.amx_weights: on x86-amx the int8 weights of wide convolutions (>= 128 input channels) get zero
point -1 with their codes shifted, so onnxruntime runs them as a general GEMM (AMX tiles); the
outputs stay bit-identical, narrow and grouped convolutions are left alone, and x86-vnni is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant import api
from edgequant.qdq.amx_weights import MIN_INPUT_CHANNELS, steer_wide_convs_to_amx
from edgequant.targets import CpuInfo, auto_target

RNG = np.random.default_rng(5)
WIDE = MIN_INPUT_CHANNELS


def _net(path: Path) -> Path:
    """x[1,16,8,8] -> Conv 1x1 (16 -> 128, narrow) -> Relu -> Conv 3x3 (128 -> 32, wide)
    -> Relu -> depthwise 3x3 (32, grouped) -> y."""
    def w(*shape):
        return (RNG.standard_normal(shape) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="narrow", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="wide", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3", "B3"], ["y"], name="depthwise", kernel_shape=[3, 3], pads=[1] * 4,
                              group=32)]
    inits = [numpy_helper.from_array(w(WIDE, 16, 1, 1), "W1"), numpy_helper.from_array(w(WIDE), "B1"),
             numpy_helper.from_array(w(32, WIDE, 3, 3) / 4, "W2"), numpy_helper.from_array(w(32), "B2"),
             numpy_helper.from_array(w(32, 1, 3, 3), "W3"), numpy_helper.from_array(w(32), "B3")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _conv_weight_zero_points(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: inits[producer[n.input[1]].input[2]] for n in model.graph.node if n.op_type == "Conv"}


def test_wide_convs_get_zero_point_minus_one_and_the_same_outputs(tmp_path: Path) -> None:
    src = _net(tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 1, 16, 8, 8)).astype(np.float32))
    vnni, amx = tmp_path / "vnni.onnx", tmp_path / "amx.onnx"
    api.quantize(src, vnni, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    api.quantize(src, amx, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-amx")
    zps = _conv_weight_zero_points(amx)
    assert np.all(zps["wide"] == -1)
    assert not zps["narrow"].any() and not zps["depthwise"].any()
    assert all(not z.any() for z in _conv_weight_zero_points(vnni).values())
    for _ in range(3):
        x = RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(_run(amx, x), _run(vnni, x))   # bit-identical


def test_a_weight_using_code_minus_128_or_a_shared_zero_point_is_left_alone(tmp_path: Path) -> None:
    src = _net(tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 1, 16, 8, 8)).astype(np.float32))
    out = tmp_path / "vnni.onnx"
    api.quantize(src, out, mode="static", calib=str(tmp_path / "calib.npz"), target="x86-vnni")
    model = onnx.load(str(out))
    producer = {o: n for n in model.graph.node for o in n.output}
    wide_dq = producer[next(n for n in model.graph.node if n.name == "wide").input[1]]
    weight = next(t for t in model.graph.initializer if t.name == wide_dq.input[0])
    codes = numpy_helper.to_array(weight).copy()
    codes.flat[0] = -128                       # w - 1 would wrap: not exact
    weight.CopyFrom(numpy_helper.from_array(codes, weight.name))
    assert steer_wide_convs_to_amx(model) == 0
    codes.flat[0] = 0
    weight.CopyFrom(numpy_helper.from_array(codes, weight.name))
    model.graph.node.append(helper.make_node("Identity", [wide_dq.input[2]], ["zp_copy"]))   # a second reader
    model.graph.output.append(helper.make_tensor_value_info("zp_copy", TensorProto.INT8, None))
    assert steer_wide_convs_to_amx(model) == 0


def test_auto_picks_x86_amx_only_where_the_cpu_has_amx_int8_tiles() -> None:
    vnni = ("avx2", "avx512f", "avx512_vnni")
    assert auto_target(CpuInfo("x86_64", "x", vnni + ("amx_int8", "amx_tile"), 2)) == "x86-amx"
    assert auto_target(CpuInfo("x86_64", "x", vnni, 2)) == "x86-vnni"
    assert auto_target(CpuInfo("x86_64", "x", ("avx2",), 2)) == "x86-avx2"


def test_run_and_tune_on_x86_amx_measure_the_unsteered_model_beside_the_steered_one(tmp_path: Path) -> None:
    from edgequant.pipeline import default_variants
    from edgequant.tune.recipes import default_recipes

    wide = onnx.load(str(_net(tmp_path / "net.onnx")), load_external_data=False)
    recipes = {r.name: r for r in default_recipes("x86-amx", wide)}
    assert recipes["static"].config("x86-amx").target == "x86-amx"
    assert recipes["static-vnni-convs"].config("x86-amx").target == "x86-vnni"   # built without the steering
    assert "static-vnni-convs" not in {r.name for r in default_recipes("x86-vnni", wide)}
    assert dict(default_variants("x86-amx", wide))["static-vnni-convs"].target == "x86-vnni"
    narrow = onnx.load(str(_net(tmp_path / "net.onnx")))
    for t in narrow.graph.initializer:
        if t.name == "W2":          # the 128-channel conv made grouped (2 x 64): nothing to steer
            t.CopyFrom(numpy_helper.from_array(np.zeros((32, WIDE // 2, 3, 3), np.float32), "W2"))
    next(n for n in narrow.graph.node if n.name == "wide").attribute.append(helper.make_attribute("group", 2))
    assert "static-vnni-convs" not in {r.name for r in default_recipes("x86-amx", narrow)}
