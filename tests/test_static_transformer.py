"""Static INT8 of a transformer block (the MiniLM collapse, issue 15): an attention mask of -10000
must not set the Softmax input's 8-bit step, a finfo.min mask must not overflow onnxruntime's
QLinearAdd (issue 14), and a residual stream with a massive activation on one token must not be
rounded to a step larger than its typical value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.algorithms.coarse_tensors import find_coarse
from edgequant.algorithms.softmax_floor import floor_offset, softmax_floors
from edgequant.devices import local_cpu
from edgequant.quantize import make_config, quantize_model
from edgequant.targets import auto_target

HOST = auto_target()   # outputs are checked on this CPU: quantize for it (AVX2 saturates VNNI models)

S, DIN, D = 16, 16, 32


def _block(path: Path, seed: int = 0, mask_value: float = -10000.0) -> Path:
    """x -> embedding MatMul h -> single-head attention with (1 - mask) * mask_value added to the scores
    -> Softmax -> context -> output MatMul -> residual Add with h -> Add of a massive activation on
    token 0, channel 3 (BERT's [CLS] outlier, 1000 against values ~1) -> LayerNorm -> MatMul -> y."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int, s: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    spike = np.zeros((S, D), np.float32)
    spike[0, 3] = 1000.0
    inits = [w("we", DIN, D), w("wq", D, D), w("wk", D, D), w("wv", D, D), w("wo", D, D, s=0.2), w("wf", D, D),
             numpy_helper.from_array(spike, "spike"),
             numpy_helper.from_array(np.ones(D, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(mask_value, np.float32), "neg"),
             numpy_helper.from_array(np.array(1 / np.sqrt(D), np.float32), "scale"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("MatMul", ["x", "we"], ["h"], name="embed"),
             *[helper.make_node("MatMul", ["h", f"w{p}"], [p], name=f"proj_{p}") for p in "qkv"],
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("Sub", ["one", "mask"], ["inv"]),
             helper.make_node("Mul", ["inv", "neg"], ["bias2d"]),
             helper.make_node("Unsqueeze", ["bias2d", "axis1"], ["bias"]),
             helper.make_node("Add", ["scaled", "bias"], ["masked"], name="mask_add"),
             helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="ctx"),
             helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="out_proj"),
             helper.make_node("Add", ["o", "h"], ["res"], name="residual"),
             helper.make_node("Add", ["res", "spike"], ["stream"], name="massive"),
             helper.make_node("LayerNormalization", ["stream", "gamma", "beta"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "wf"], ["y"], name="head")]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, DIN]),
                                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, S])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, D])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.zeros((1, S), np.float32)
        mask[0, : rng.integers(3, S + 1)] = 1.0          # padded texts: keys past the length are masked
        out.append({"x": rng.normal(0, 1, (1, S, DIN)).astype(np.float32), "mask": mask})
    return out


def _source(tmp_path: Path, model: Path, n: int, seed: int):
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    s = _samples(n, seed)
    path = tmp_path / f"data{seed}.npz"
    np.savez(path, x=np.stack([d["x"] for d in s]), mask=np.stack([d["mask"] for d in s]))
    return open_source(str(path), graph_inputs(load_model(model)))


def _mean_cosine(ref_model: Path, model: Path, samples: list[dict[str, np.ndarray]]) -> float:
    """Mean per-sample cosine of y over the unmasked tokens."""
    got = local_cpu().outputs([ref_model, model], samples).outputs
    cos = []
    for i, s in enumerate(samples):
        keep = s["mask"][0] > 0
        a = got[0]["y"][i].reshape(S, D)[keep].ravel().astype(np.float64)
        b = got[1]["y"][i].reshape(S, D)[keep].ravel().astype(np.float64)
        cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(cos))


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _block(tmp_path_factory.mktemp("block") / "block.onnx")


@pytest.fixture(scope="module")
def finfo_block(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The block with Hugging Face's mask value, finfo(float32).min, instead of -10000."""
    return _block(tmp_path_factory.mktemp("block") / "finfo.onnx", mask_value=float(np.finfo(np.float32).min))


def test_softmax_floor_clamps_only_the_mask(block: Path) -> None:
    floors = softmax_floors(block, _samples(16, 0), local_cpu())
    f = floors.floors["masked"]
    assert f.rmin < -9000 and f.row_length == S          # the mask sets ORT's min/max range
    assert f.floor == pytest.approx(f.min_row_max - floor_offset(S))
    assert -40 < f.floor < 0 and floors.clamped == {"masked": f}
    (entry,) = floors.overrides()["masked"]
    assert float(entry["rmin"]) == pytest.approx(f.floor, rel=1e-6) and float(entry["rmax"]) == pytest.approx(f.rmax)


def test_static_block_stays_within_cosine_099(tmp_path: Path, block: Path) -> None:
    calib = _source(tmp_path, block, 32, 0)
    out = tmp_path / "static.onnx"
    res = quantize_model(block, out, make_config("static", HOST), calib)
    assert any(n.startswith("Softmax input floor") for n in res.notes), res.notes
    assert any(n.startswith("coarse activations kept float") for n in res.notes), res.notes
    q = onnx.load(str(out))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert "stream" not in quantized and {"ln", "h", "probs"} <= quantized   # INT8 kernels keep their inputs
    assert _mean_cosine(block, out, _samples(24, 7)) >= 0.99


@pytest.mark.parametrize("disabled", ["softmax_floor", "keep_coarse_float"])
def test_each_rule_is_needed(tmp_path: Path, block: Path, monkeypatch: pytest.MonkeyPatch, disabled: str) -> None:
    """Without the floor the mask's range flattens attention; without the float residual stream the
    massive activation's step flattens every other token: the old static recipe's collapse."""
    import edgequant.quantize as quantize

    monkeypatch.setattr(quantize, disabled, lambda *args: args[2] if disabled == "softmax_floor" else args[1])
    out = tmp_path / "static.onnx"
    quantize_model(block, out, make_config("static", "x86-vnni"), _source(tmp_path, block, 32, 0))
    assert _mean_cosine(block, out, _samples(24, 7)) < 0.95


def test_coarse_tensors_spare_int8_kernel_inputs(tmp_path: Path, block: Path) -> None:
    """The massive activation is coarse, and so would be the LayerNorm output feeding a MatMul if
    its step were large: only tensors no integer kernel reads lose their Q/DQ."""
    calib = _source(tmp_path, block, 16, 0)
    out = tmp_path / "q.onnx"
    quantize_model(block, out, make_config("static", HOST), calib)
    found, pairs = find_coarse(block, onnx.load(str(out)), _samples(8, 0), local_cpu(), min_levels=1e9)
    assert {p.tensor for p in pairs} == set(found.kept_float)
    assert not {"h", "ln", "probs", "ctx", "q", "v", "kt"} & set(found.kept_float)


def test_cap_sentinels_caps_only_sentinel_ends() -> None:
    from edgequant.algorithms.sentinels import CAP, cap_sentinels

    lowest = np.float32(np.finfo(np.float32).min)
    caps = cap_sentinels({"bias": [{"rmin": lowest, "rmax": np.float32(0.0)}],
                          "scores": [{"rmin": np.float32(-30.0), "rmax": np.float32(12.0)}],
                          "sym": [{"rmin": lowest, "rmax": -lowest, "scale": 1.0}]})
    assert caps.capped == ("bias", "sym")
    assert [float(caps.overrides["bias"][0][k]) for k in ("rmin", "rmax")] == [-CAP, 0.0]
    assert caps.overrides["scores"] == [{"rmin": np.float32(-30.0), "rmax": np.float32(12.0)}]
    assert float(caps.overrides["sym"][0]["rmax"]) == CAP and caps.overrides["sym"][0]["scale"] == 1.0
    assert cap_sentinels({}).capped == () and cap_sentinels({}).describe() == ""


@pytest.mark.parametrize("cap", [True, False])
def test_a_finfo_min_mask_needs_its_range_capped(tmp_path: Path, finfo_block: Path, monkeypatch: pytest.MonkeyPatch,
                                               cap: bool) -> None:
    """Hugging Face's finfo.min mask: calibrated as it is, its uint8 step is 1.3e36 and onnxruntime's
    fused QLinearAdd puts every score at its lowest code (uniform attention); capped, the block
    stays within 0.99 like the -10000 one."""
    import edgequant.quantize as quantize

    if not cap:
        monkeypatch.setattr(quantize, "cap_sentinels", lambda ranges, notes: ranges)
    out = tmp_path / "static.onnx"
    res = quantize_model(finfo_block, out, make_config("static", HOST), _source(tmp_path, finfo_block, 32, 0))
    cosine = _mean_cosine(finfo_block, out, _samples(24, 7))
    if cap:
        assert any(n.startswith("float sentinels") for n in res.notes), res.notes
        assert cosine >= 0.99
    else:
        assert cosine < 0.95
