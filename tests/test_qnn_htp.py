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
    same = api.evaluate(out, str(data), reference=model)           # the CPU EP: close, not identical
    assert same.fidelity.cosine > 0.99 and same.fidelity.max_abs_err != res.fidelity.max_abs_err


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
