"""The qnn-htp device: onnxruntime-qnn's HTP backend (Qualcomm's simulator on x86-64).

Needs the optional extra ``edgequant[qnn]`` (``make test`` installs it); without it every test
here is skipped with the reason, and the rest of the suite runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx_models
from edgequant.devices import get_device
from edgequant.devices.qnn_htp import QnnHtpDevice
from edgequant.quantize import make_config, quantize_model

QNN = get_device("qnn-htp")
FACTS = QNN.facts()
pytestmark = pytest.mark.skipif(not FACTS.available, reason=f"qnn-htp unavailable: {FACTS.why}")
DMS = Path(__file__).resolve().parents[1] / ".cache" / "dms"


def _static_conv(tmp_path: Path) -> Path:
    model = onnx_models.conv_net(opset=13, channels=16, size=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1   # HTP needs static shapes
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    return onnx_models.save(model, tmp_path / "conv.onnx")


@pytest.fixture
def conv_and_data(tmp_path: Path) -> tuple[Path, Path]:
    model = _static_conv(tmp_path)
    data = tmp_path / "data.npz"
    np.savez(data, input=np.random.default_rng(0).normal(0, 1, (12, 1, 3, 16, 16)).astype(np.float32))
    return model, data


def test_facts_say_it_is_a_simulator_that_cannot_time() -> None:
    assert FACTS.kind == "qnn-htp" and FACTS.available
    assert FACTS.can_time is False and FACTS.emulated is True      # x86-64 host: the HTP simulator
    with pytest.raises(Exception, match="simulator"):
        QNN.time_interleaved(["x.onnx"], {})


def test_qnn_recipe_runs_fully_on_htp_and_matches_the_cpu(conv_and_data) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model, data = conv_and_data
    src = open_source(str(data), graph_inputs(load_model(model)))
    out = model.with_name("conv.qnn.onnx")
    quantize_model(model, out, make_config("static", "qnn"), src)
    placement = QNN.placement(out)
    assert placement.compute_on_cpu == 0 and placement.accelerator > 0, placement
    assert QNN.coverage(out).ratio == 1.0
    on_htp = QNN.outputs([out], src).outputs[0]["logits"]
    on_cpu = get_device("cpu").outputs([model], src).outputs[0]["logits"]
    cos = float(np.sum(on_htp * on_cpu) / (np.linalg.norm(on_htp) * np.linalg.norm(on_cpu)))
    assert cos > 0.99
    # the FP32 model also runs on HTP (fp16), but no compute op of it is quantized
    assert QNN.coverage(model).quantized_compute_ops == 0


@pytest.mark.skipif(not (DMS / "models" / "face_landmark.onnx").is_file(),
                    reason="DMS cache missing: run `python -m edgequant.dms.build --out .cache/dms` (make test does)")
def test_face_presence_is_not_zero_on_htp(tmp_path: Path) -> None:
    """Regression: edgequant's qnn recipe used to apply the CPU-only PRelu decomposition, after
    which HTP returned 0.0 for the face-presence output on every sample (CPU EP: ~16-21)."""
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    fp32 = DMS / "models" / "face_landmark.onnx"
    inputs = graph_inputs(load_model(fp32))
    calib = open_source(str(DMS / "data" / "face_landmark.calibration.npz"), inputs, limit=20)
    evals = open_source(str(DMS / "data" / "face_landmark.evaluation.npz"), inputs, limit=12)
    out = tmp_path / "fl.qnn.onnx"
    quantize_model(fp32, out, make_config("static", "qnn"), calib)
    assert "PRelu" in {n.op_type for n in load_model(out).graph.node}       # no CPU rewrite for qnn
    ref = get_device("cpu").outputs([fp32], evals).outputs[0]["conv2d_31"].ravel()
    got = QNN.outputs([out], evals).outputs[0]["conv2d_31"].ravel()
    assert abs(got.mean() - ref.mean()) < 0.05 * abs(ref.mean()), (got.mean(), ref.mean())
    assert np.all(np.sign(got) == np.sign(ref))


def test_run_for_target_qnn_measures_on_htp_and_stays_quiet(conv_and_data, tmp_path: Path) -> None:
    model, data = conv_and_data
    out = tmp_path / "rep"
    # 400 evaluation samples: fewer cannot show top-1 agreement >= 0.99 with 95% confidence (undecided)
    evals = tmp_path / "eval.npz"
    np.savez(evals, input=np.random.default_rng(1).normal(0, 1, (400, 1, 3, 16, 16)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-m", "edgequant", "run", str(model), "--calib", str(data), "--target", "qnn",
                           "--eval", str(evals), "-o", str(out), "--runs", "5", "--warmup", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "LIBNATIVE" not in proc.stdout + proc.stderr          # the QNN libraries' own prints stay hidden
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == {"name": "qnn-htp", "kind": "qnn-htp", "emulated": True}
    static = next(v for v in report["variants"] if v["name"] == "static")
    assert static["measured_on"] == {"outputs": "qnn-htp", "latency": "cpu"}
    assert static["placement"]["compute_on_cpu"] == 0
    a16 = next(v for v in report["variants"] if v["name"] == "static-a16w8")       # first class on HTP
    assert a16["config"]["activation_type"] == "uint16" and a16["placement"]["compute_on_cpu"] == 0
    assert a16["config"]["gptq"] and any("(GPTQ)" in n for n in a16["notes"])   # 8-bit weights GPTQ-rounded
    assert report["recommended"] in ("static", "static-a16w8"), static["verdict"]
    assert any("not latency" in n for n in report["notes"])


def test_eval_on_htp_against_the_cpu_reference(conv_and_data) -> None:
    from edgequant import api

    model, data = conv_and_data
    out = model.with_name("conv.qnn.onnx")
    api.quantize(model, out, mode="static", calib=str(data), target="qnn")
    res = api.evaluate(out, str(data), reference=model, device="qnn-htp")
    assert res.fidelity.cosine > 0.99 and res.fidelity.top1_agreement is not None
    assert any("ran on qnn-htp" in n for n in res.notes)
    same = api.evaluate(out, str(data), reference=model)           # the CPU EP: as close (as SM8650, identical)
    assert same.fidelity.cosine > 0.99 and abs(same.fidelity.cosine - res.fidelity.cosine) < 0.01


def test_export_context_writes_a_precompiled_model_with_the_same_outputs(conv_and_data) -> None:
    import onnx

    model, data = conv_and_data
    out = model.with_name("conv.q.onnx")
    proc = subprocess.run([sys.executable, "-m", "edgequant", "quantize", str(model), "-o", str(out), "--mode", "static",
                           "--target", "qnn", "--calib", str(data), "--export-context"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    ctx = out.with_name("conv.q_ctx.onnx")
    assert "EPContext" in {n.op_type for n in onnx.load(str(ctx)).graph.node}
    x = {"input": np.load(data)["input"][0]}
    np.testing.assert_array_equal(QNN.open(ctx).run(None, x)[0], QNN.open(out).run(None, x)[0])
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []   # no temp files left
    bad = subprocess.run([sys.executable, "-m", "edgequant", "quantize", str(model), "-o", str(out.with_name("x.onnx")),
                          "--mode", "static", "--calib", str(data), "--export-context"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--target qnn" in bad.stderr


def _matmul_layernorm(tmp_path: Path) -> tuple[Path, Path]:
    """MatMul -> LayerNormalization (a transformer block's tail), static shapes for HTP."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
         helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], name="ln", axis=-1)], "mm_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])],
        [numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.uniform(0.5, 1.5, 64).astype(np.float32), "g"),
         numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mm_ln.onnx"
    onnx.save(model, path)
    data = tmp_path / "mm_ln.npz"
    np.savez(data, x=rng.normal(0, 1, (16, 1, 16, 64)).astype(np.float32))
    return path, data


def _without_htp_rules(monkeypatch) -> None:
    """Stand-in for an HTP op rule edgequant does not know yet."""
    from edgequant.qdq import htp_rules

    monkeypatch.setattr(htp_rules, "uint8_weight_tensors", lambda model: [])


def test_layernorm_needs_a_uint8_scale_on_htp(tmp_path: Path, monkeypatch) -> None:
    """HTP rejects LayerNormalization with a symmetric int8 scale (the node then runs on the CPU);
    the qnn recipe writes its scale as uint8 (qdq.htp_rules), and it runs on HTP."""
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model, data = _matmul_layernorm(tmp_path)
    src = open_source(str(data), graph_inputs(load_model(model)))
    out = tmp_path / "ln.qnn.onnx"
    quantize_model(model, out, make_config("static", "qnn"), src)
    placement = QNN.placement(out)
    assert placement.compute_on_cpu == 0 and placement.operators_on_cpu == (), placement
    got = QNN.outputs([out], src).outputs[0]["y"].ravel()
    ref = get_device("cpu").outputs([model], src).outputs[0]["y"].ravel()
    assert float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))) > 0.999

    _without_htp_rules(monkeypatch)
    bare = tmp_path / "ln.bare.onnx"
    quantize_model(model, bare, make_config("static", "qnn"), src)
    assert ("ln", "LayerNormalization") in QNN.placement(bare).operators_on_cpu   # counted, never hidden


def test_tune_on_htp_repairs_cpu_fallback_instead_of_accepting_it(tmp_path: Path, monkeypatch) -> None:
    """An operator HTP leaves to the CPU is never within budget; tune's placement stage finds the
    uint8-weight repair and recommends a variant that runs wholly on HTP, without float layers."""
    from edgequant.pipeline import RunOptions
    from edgequant.tune import TuneOptions, run_tune

    _without_htp_rules(monkeypatch)
    ran_on_htp: list[str] = []
    iter_outputs = QnnHtpDevice.iter_outputs

    def spy(self, model_paths, samples, *args, **kwargs):
        ran_on_htp.extend(Path(p).name for p in model_paths)
        return iter_outputs(self, model_paths, samples, *args, **kwargs)

    monkeypatch.setattr(QnnHtpDevice, "iter_outputs", spy)
    model, data = _matmul_layernorm(tmp_path)
    run = RunOptions(target="qnn", runs=5, warmup=1, measure_memory=False, output_roles={"y": "dense"})
    report = run_tune(model, tmp_path / "out", calib=str(data), eval_spec=str(data),
                      options=TuneOptions(run=run, trial_runs=4, trial_warmup=1, workers=1, max_candidates=8))
    # the final measurement keeps the search's HTP outputs of the finalists: none of their published
    # copies ran on the simulator again, yet each carries its quality and says where it was measured
    finalists = [v for v in report["variants"] if v["config"].get("mode") == "static"]
    assert finalists and ran_on_htp
    assert not {Path(v["path"]).name for v in finalists} & set(ran_on_htp)
    assert all(v["measured_on"]["outputs"] == "qnn-htp" and v["fidelity"]["cosine"] > 0 for v in finalists)
    assert any("did not run them there again" in n for n in report["notes"])
    trace = {r["name"]: r for r in report["search_trace"]}
    assert list(trace)[:2] == ["static", "static-a16w8"]                 # no dynamic on HTP
    assert not trace["static"]["within_budget"] and "run on the CPU, not on qnn-htp: ln" in trace["static"]["outcome"]
    assert trace["static+u8w"]["stage"] == "placement" and trace["static+u8w"]["within_budget"]
    assert not any(r["float_nodes"] for r in report["search_trace"])
    rec = next(v for v in report["variants"] if v["name"] == report["recommended"])
    assert rec["placement"]["compute_on_cpu"] == 0 and rec["config"]["mode"] == "static"
    assert report["tune"]["float_fallback"] is False


def _conv_maxpool_channel_pad(tmp_path: Path) -> tuple[Path, Path]:
    """Conv -> MaxPool -> Pad(16 zero channels): a BlazeFace block's widening, zero point != 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
         helper.make_node("Pad", ["m", "pads"], ["y"], mode="constant", name="pad")], "widen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 16, 0, 0], np.int64), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "widen.onnx"
    onnx.save(model, path)
    data = tmp_path / "widen.npz"
    np.savez(data, x=rng.normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32))
    return path, data


def test_channel_pad_is_zero_on_htp(tmp_path: Path, monkeypatch) -> None:
    """HTP pads with the raw 0 instead of the zero point (what zeroed the decomposed face-landmark
    presence head); the qnn recipe writes channel pads as Concat with zeros (exact), which HTP runs right."""
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model, data = _conv_maxpool_channel_pad(tmp_path)
    src = open_source(str(data), graph_inputs(load_model(model)))
    out = tmp_path / "widen.qnn.onnx"
    quantize_model(model, out, make_config("static", "qnn"), src)
    assert "Pad" not in {n.op_type for n in load_model(out).graph.node}
    assert QNN.placement(out).compute_on_cpu == 0
    got = QNN.outputs([out], src).outputs[0]["y"]
    ref = get_device("cpu").outputs([model], src).outputs[0]["y"]
    assert np.all(got[:, :, 16:] == 0.0)
    assert np.abs(got[:, :, :16] - ref[:, :, :16]).max() < 0.1 * np.abs(ref).max()

    # the simulator's defect itself, without the rewrite: in its SoC-less default configuration
    # (compiled as SM8650 it pads right; older HTPs may not, so the exact rewrite stays)
    monkeypatch.setattr("edgequant.qdq.htp_rules.HTP_REWRITES", ())
    bare = tmp_path / "widen.bare.onnx"
    quantize_model(model, bare, make_config("static", "qnn"), src)
    assert "Pad" in {n.op_type for n in load_model(bare).graph.node}
    socless = QnnHtpDevice(provider_options={"soc_model": "0"})
    assert np.abs(socless.outputs([bare], src).outputs[0]["y"][:, :, 16:]).max() > 1.0
    assert np.all(QNN.outputs([bare], src).outputs[0]["y"][:, :, 16:] == 0.0)


def test_the_simulator_compiles_for_a_named_snapdragon(monkeypatch) -> None:
    """Without a SoC the simulator fails to finalize the HF BertModel (QNN_COMMON_ERROR_MEM_ALLOC);
    edgequant names one (SM8650 unless EDGEQUANT_QNN_SOC_MODEL says otherwise)."""
    from edgequant.errors import EdgequantError

    assert QNN.provider_options["soc_model"] == "57" and "SM8650" in FACTS.why
    monkeypatch.setenv("EDGEQUANT_QNN_SOC_MODEL", "69")
    assert QnnHtpDevice().provider_options["soc_model"] == "69" and "SM8750" in QnnHtpDevice().facts().why
    monkeypatch.setenv("EDGEQUANT_QNN_SOC_MODEL", "8gen3")
    with pytest.raises(EdgequantError, match="EDGEQUANT_QNN_SOC_MODEL='8gen3': expected QNN's numeric SoC id"):
        QnnHtpDevice()


def test_an_erf_gelu_block_runs_entirely_on_htp(tmp_path: Path) -> None:
    """HTP does not take Erf: the qnn recipe writes each erf GELU as one Gelu, so a BERT FFN block
    (MatMul -> GELU -> MatMul) has no CPU round trip, and one output scale instead of four."""
    from onnx import TensorProto, helper, numpy_helper

    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    rng = np.random.default_rng(0)
    consts = {"w": rng.normal(0, 0.2, (64, 64)).astype(np.float32), "sq": np.array(np.sqrt(2.0), np.float32),
              "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Div", ["h", "sq"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"]),
             helper.make_node("MatMul", ["g", "w"], ["y"])]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ffn.onnx"
    onnx_models.save(model, path)
    np.savez(tmp_path / "ffn.npz", x=rng.normal(0, 1, (16, 1, 16, 64)).astype(np.float32))
    src = open_source(str(tmp_path / "ffn.npz"), graph_inputs(load_model(path)))
    out = tmp_path / "ffn.qnn.onnx"
    notes = quantize_model(path, out, make_config("static", "qnn"), src).notes
    assert any(n.startswith("1 erf-form GELU") for n in notes), notes
    ops = {n.op_type for n in load_model(out).graph.node}
    assert "Erf" not in ops and "Gelu" in ops
    assert QNN.placement(out).compute_on_cpu == 0
    got = QNN.outputs([out], src).outputs[0]["y"].astype(np.float64)
    ref = get_device("cpu").outputs([path], src).outputs[0]["y"].astype(np.float64)
    assert float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.999
