"""QAT from the ONNX file (issue 11, deliverable 2): fake-quant equals onnxruntime's Q/DQ bit for bit,
the export round trip stays within one output step, training fixes a planted bad range, an op the
interpreter lacks is named in one line, and nothing imports torch unless qat runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from edgequant import api  # noqa: E402
from edgequant.devices import local_cpu  # noqa: E402
from edgequant.errors import EdgequantError  # noqa: E402
from edgequant.measure.session import SessionConfig  # noqa: E402
from edgequant.qat import _fp32_weights, _weight_range, output_steps  # noqa: E402
from edgequant.qat import fakequant as fq  # noqa: E402
from edgequant.qat.export import export_qdq  # noqa: E402
from edgequant.qat.interpreter import QDQNet  # noqa: E402
from edgequant.qat.train import Distiller, TrainConfig, train  # noqa: E402
from edgequant.quantize import make_config  # noqa: E402
from edgequant.targets import auto_target, detect_cpu  # noqa: E402

RAW = SessionConfig(graph_optimization="disable")


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _net_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> PRelu -> depthwise Conv -> residual Add -> MaxPool -> channel Pad + Concat -> 1x1 Conv,
    then a box-like head (Transpose, Reshape) and a score head (GlobalAveragePool, Flatten, Gemm, Sigmoid)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)), _init("b1", rng.normal(0, 0.1, 8).astype(np.float32)),
        _init("alpha", np.full((8, 1, 1), 0.2, np.float32)),
        _init("w2", rng.normal(0, 0.4, (8, 1, 3, 3)).astype(np.float32)), _init("b2", rng.normal(0, 0.1, 8).astype(np.float32)),
        _init("pads", np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64)),
        _init("w3", rng.normal(0, 0.3, (6, 20, 1, 1)).astype(np.float32)), _init("b3", rng.normal(0, 0.1, 6).astype(np.float32)),
        _init("shape", np.array([1, 128, 3], np.int64)),
        _init("wg", rng.normal(0, 0.5, (6, 4)).astype(np.float32)), _init("bg", rng.normal(0, 0.1, 4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("PRelu", ["c1", "alpha"], ["p1"], name="prelu"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dw"),
        helper.make_node("Add", ["p1", "c2"], ["a1"], name="add"),
        helper.make_node("MaxPool", ["a1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Pad", ["m1", "pads"], ["pd"], mode="constant", name="pad"),
        helper.make_node("Concat", ["m1", "pd"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Transpose", ["c3"], ["t"], perm=[0, 2, 3, 1], name="transpose"),
        helper.make_node("Reshape", ["t", "shape"], ["boxes"], name="reshape"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="gemm"),
        helper.make_node("Sigmoid", ["logits"], ["probs"], name="sigmoid"),
    ]
    graph = helper.make_graph(nodes, "qat_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 128, 3]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def net_files(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    model = tmp_path / "net.onnx"
    onnx.save(_net_model(), str(model))
    xs = np.random.default_rng(1).normal(0, 1, (40, 1, 3, 16, 16)).astype(np.float32)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=xs[:, 0])
    return model, calib, xs


def _qdq_net(model: Path, calib: Path, out: Path, target: str, per_channel: bool) -> tuple[QDQNet, onnx.ModelProto]:
    api.quantize(model, out, mode="static", calib=str(calib), target=target, per_channel=per_channel)
    config = make_config("static", target, per_channel=per_channel)
    qdq = onnx.load(str(out))
    return QDQNet(qdq, _fp32_weights(model, config), _weight_range(config)), qdq


def _torch_outputs(net: QDQNet, xs: np.ndarray) -> dict[str, np.ndarray]:
    net.eval()
    with torch.no_grad():
        outs = net(torch.from_numpy(xs[:, 0]))
    return {n: o.numpy()[:, None] for n, o in zip(net.output_names, outs)}


# ---- fake quant == onnxruntime ------------------------------------------------------------------

def test_fake_quant_matches_onnxruntime_bit_for_bit(tmp_path: Path) -> None:
    """Per-tensor uint8 (zero point 128, odd scale) and per-channel int8 (axis 1, odd zero points):
    onnxruntime's QuantizeLinear integers and DequantizeLinear floats, on random values, exact
    half-way values (round half to even, both parities) and values far beyond the range."""
    rng = np.random.default_rng(0)
    s_t, z_t = np.float32(0.0371), np.uint8(128)
    s_c = np.array([0.25, 0.5, 0.125, 0.0517], np.float32)
    z_c = np.array([0, 3, -5, 1], np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "st", "zt"], ["qt"]),
             helper.make_node("DequantizeLinear", ["qt", "st", "zt"], ["yt"]),
             helper.make_node("QuantizeLinear", ["x", "sc", "zc"], ["qc"], axis=1),
             helper.make_node("DequantizeLinear", ["qc", "sc", "zc"], ["yc"], axis=1)]
    shape = [64, 4, 5]
    outs = [helper.make_tensor_value_info(n, t, shape) for n, t in
            (("qt", TensorProto.UINT8), ("yt", TensorProto.FLOAT), ("qc", TensorProto.INT8), ("yc", TensorProto.FLOAT))]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outs,
                              [_init("st", s_t), _init("zt", z_t), _init("sc", s_c), _init("zc", z_c)])
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    x = rng.normal(0, 3, shape).astype(np.float32)
    k = rng.integers(-140, 140, shape)
    x[:16] = ((k[:16] + 0.5) * s_c.reshape(1, 4, 1)).astype(np.float32)   # exact halves of the channel step
    x[16:24] = rng.normal(0, 400, (8, 4, 5))                                 # saturation both ways
    assert np.any(np.abs(x[:16] / s_c.reshape(1, 4, 1) % 1 - 0.5) < 1e-9)
    ort = local_cpu(RAW).outputs([str(path)], [{"x": x}]).outputs[0]

    xt = torch.from_numpy(x)
    st, zt = torch.tensor(s_t), torch.tensor(float(z_t))
    sc, zc = torch.from_numpy(s_c), torch.from_numpy(z_c.astype(np.float32))
    assert np.array_equal(fq.quantize(xt, st, zt, 0, 255).numpy(), ort["qt"][0].astype(np.float32))
    assert np.array_equal(fq.fake_quant(xt, st, zt, 0, 255).numpy(), ort["yt"][0])
    assert np.array_equal(fq.quantize(xt, sc, zc, -128, 127, axis=1).numpy(), ort["qc"][0].astype(np.float32))
    assert np.array_equal(fq.fake_quant(xt, sc, zc, -128, 127, axis=1).numpy(), ort["yc"][0])
    # straight-through: the gradient passes rounding inside the range and stops where it saturates
    xg = xt.clone().requires_grad_(True)
    fq.fake_quant(xg, st, zt, 0, 255).sum().backward()
    r = np.round(x / s_t) + 128
    inside = (r >= 0) & (r <= 255)
    assert np.array_equal(xg.grad.numpy(), inside.astype(np.float32))


# ---- export round trip --------------------------------------------------------------------------

# onnxruntime's outputs match the fake-quant forward where the CPU adds u8*s8 products without
# saturating: VNNI. AVX2 sums pairs in int16, which 8-bit weights (x86-vnni's) can overflow.
NEEDS_VNNI = pytest.mark.skipif(not detect_cpu().has_vnni, reason="x86-vnni's 8-bit weights saturate this CPU's "
                                "AVX2 int16 pair sums: the export check needs a VNNI CPU")


@pytest.mark.parametrize("target,per_channel", [pytest.param("x86-vnni", True, marks=NEEDS_VNNI), ("x86-avx2", False)])
def test_export_round_trip_within_one_step(net_files, tmp_path: Path, target: str, per_channel: bool) -> None:
    """The PTQ graph interpreted in torch starts at PTQ's exact integers; after moving every weight,
    bias and scale (as training does), the exported QDQ model run by onnxruntime (optimized: integer
    kernels) equals the torch fake-quant model within one output quantization step, while the
    untrained PTQ model is many steps away (so the check would catch an export that wrote nothing)."""
    model, calib, xs = net_files
    net, qdq = _qdq_net(model, calib, tmp_path / "ptq.onnx", target, per_channel)
    ptq_ints = {k: numpy_helper.to_array(t) for k, t in ((t.name, t) for t in qdq.graph.initializer)}
    start = export_qdq(net, qdq)
    for t in start.graph.initializer:   # torch starts from exactly what PTQ wrote
        assert np.array_equal(numpy_helper.to_array(t), ptq_ints[t.name]), t.name

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in net.weights.values():
            w.u += torch.randn(w.u.shape, generator=g) * 3
        for b in net.biases.values():
            b.v += torch.randn(b.v.shape, generator=g)
        for s in net.scales.values():
            s.r.mul_(torch.empty(s.r.shape).uniform_(0.6, 1.5, generator=g))
    trained = export_qdq(net, qdq)
    out = tmp_path / "trained.onnx"
    onnx.save(trained, str(out))
    lo, hi = _weight_range(make_config("static", target, per_channel=per_channel))(TensorProto.INT8)
    for wout, key in net.weight_keys.items():
        q = numpy_helper.to_array(next(t for t in trained.graph.initializer
                                       if t.name == next(n.input[0] for n in trained.graph.node if n.output[0] == wout)))
        if q.dtype == np.int8 and net.weights[key].qmin < 0:
            assert lo <= q.min() and q.max() <= hi      # the target's weight range (7-bit on avx2)

    test = xs[32:]
    mine = _torch_outputs(net, test)
    got = local_cpu().outputs([str(out), str(tmp_path / "ptq.onnx")], [{"x": x} for x in test]).outputs
    steps = output_steps(trained)
    assert set(steps) == {"boxes", "probs"}
    for name, step in steps.items():
        assert np.max(np.abs(got[0][name] - mine[name])) <= step * 1.0001, name
    assert max(np.max(np.abs(got[1][n] - mine[n])) / steps[n] for n in steps) > 3


# ---- training -----------------------------------------------------------------------------------

def _sqnr(ref: dict, got: dict) -> float:
    return min(10 * np.log10(np.sum(ref[n].astype(np.float64) ** 2) / np.sum((ref[n] - got[n]).astype(np.float64) ** 2))
               for n in ref)


def test_training_fixes_a_planted_bad_range(net_files, tmp_path: Path) -> None:
    """PTQ planted off: the first layer's activation scale 4x too wide (as a few outlying calibration
    samples would make it). Distillation from FP32 must cut the error of the exported model (run by
    onnxruntime) against FP32 by at least 3 dB, and shrink that scale; with no training steps the
    error stays (the test fails if training is a no-op)."""
    model, calib, xs = net_files
    ptq = tmp_path / "ptq.onnx"
    api.quantize(model, ptq, mode="static", calib=str(calib), target="x86-vnni")
    qdq = onnx.load(str(ptq))
    victim = next(n.input[1] for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1")
    for t in qdq.graph.initializer:
        if t.name == victim:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(4), t.name))
    config = make_config("static", "x86-vnni")
    net = QDQNet(qdq, _fp32_weights(model, config), _weight_range(config))
    feeds = [{"x": x} for x in xs]
    teacher = local_cpu().outputs([str(model)], feeds).outputs[0]
    d = Distiller(net, feeds, teacher)
    train_idx, hold = list(range(32)), list(range(32, 40))

    def judged(n: onnx.ModelProto) -> float:
        path = tmp_path / "judged.onnx"
        onnx.save(n, str(path))
        got = local_cpu().outputs([str(path)], feeds[32:]).outputs[0]
        return _sqnr({k: v[32:] for k, v in teacher.items()}, got)

    before = judged(export_qdq(net, qdq))
    res = train(d, train_idx, hold, TrainConfig(epochs=20, batch_size=8, lr=1e-2, scale_lr=3e-2))
    after = judged(export_qdq(net, qdq))
    assert res.best_epoch > 0 and res.steps == 80
    assert res.curve[res.best_epoch]["holdout_loss"] < res.curve[0]["holdout_loss"]
    assert after > before + 3, (before, after)
    assert float(net.scales[net.scale_keys[victim]].scale().detach()) < 0.8 * float(numpy_helper.to_array(
        next(t for t in qdq.graph.initializer if t.name == victim)))


def test_time_budget_stops_and_keeps_the_best(net_files, tmp_path: Path) -> None:
    model, calib, xs = net_files
    net, _ = _qdq_net(model, calib, tmp_path / "ptq.onnx", "x86-vnni", True)
    feeds = [{"x": x} for x in xs]
    d = Distiller(net, feeds, local_cpu().outputs([str(model)], feeds).outputs[0])
    res = train(d, list(range(32)), list(range(32, 40)), TrainConfig(epochs=1000, time_budget_s=0.0))
    assert res.stopped_by == "time budget" and res.epochs_run == 1 and res.steps == 1
    best = min(r["holdout_loss"] for r in res.curve)
    assert res.curve[res.best_epoch]["holdout_loss"] == best


# ---- end to end: CLI ----------------------------------------------------------------------------

def test_cli_qat_writes_model_and_record(net_files, tmp_path: Path) -> None:
    from edgequant.cli import main

    model, calib, _ = net_files
    out = tmp_path / "qat"
    assert main(["qat", str(model), "--calib", str(calib), "--epochs", "2", "--target", auto_target(), "-o", str(out)]) == 0
    rec = json.loads((out / "qat.json").read_text())
    assert (out / "model.int8.onnx").is_file() and (out / "model.ptq.onnx").is_file()
    assert rec["epochs_run"] == 2 and len(rec["loss_curve"]) == 3 and rec["holdout_samples"] == 8
    assert all(v["max_steps"] <= 1.0001 and v["within_one_step"] == 1.0 for v in rec["export_check"].values())
    assert set(rec["fidelity"]) == {"ptq", "qat"}
    # a second run refuses to replace the model without --force
    assert main(["qat", str(model), "--calib", str(calib), "--epochs", "1", "-o", str(out)]) == 1


# ---- errors and the optional extra --------------------------------------------------------------

@pytest.mark.parametrize("op_type,attrs", [
    ("ConvTranspose", {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ("ConvTranspose", {"strides": [2, 2], "pads": [0, 1, 1, 0], "group": 2}),      # uneven pads (a crop)
    ("BatchNormalization", {"epsilon": 1e-3}),
])
def test_ops_the_zoo_needed_match_onnxruntime(op_type: str, attrs: dict) -> None:
    # PP-OCR's text detector: ConvTranspose upsampling, each followed by a BatchNormalization
    import onnxruntime as ort
    import torch

    from edgequant.qat.ops import OPS

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    if op_type == "ConvTranspose":
        consts = [rng.standard_normal((4, 6 // attrs.get("group", 1), 3, 3)).astype(np.float32),
                  rng.standard_normal(6).astype(np.float32)]
    else:
        consts = [rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32),
                  rng.standard_normal(4).astype(np.float32), rng.uniform(0.1, 2, 4).astype(np.float32)]
    names = [f"c{i}" for i in range(len(consts))]
    graph = helper.make_graph([helper.make_node(op_type, ["x", *names], ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_init(n, c) for n, c in zip(names, consts)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = OPS[op_type]([torch.from_numpy(x), *map(torch.from_numpy, consts)], attrs, 13)[0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unsupported_op_is_named_in_one_line() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(EdgequantError, match=r"qat cannot interpret op\(s\) Hardmax") as err:
        QDQNet(model, {}, lambda t: fq.TYPE_RANGE[t], where="m.onnx")
    assert "\n" not in str(err.value)


def test_cli_and_api_do_not_import_torch() -> None:
    code = ("import sys, edgequant.api, edgequant.cli as c; c._register(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


def test_without_torch_qat_says_install_the_extra(net_files) -> None:
    model, calib, _ = net_files
    code = ("import sys; sys.modules['torch'] = None; from edgequant.cli import main; "
            f"sys.exit(main(['qat', {str(model)!r}, '--calib', {str(calib)!r}, '-o', {str(model.parent / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["edgequant: error: edgequant qat needs PyTorch: pip install 'edgequant[qat]'"]


def _env() -> dict:
    import os

    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
