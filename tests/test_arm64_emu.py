"""The arm64-emu device: aarch64 onnxruntime (the host's version) in a Debian arm64 root under
qemu-user. ``make test`` builds the root first (`edgequant devices setup arm64-emu`); where it
cannot (not root, no binfmt_misc) every test here is skipped with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx_models
from edgequant.devices import get_device

ARM = get_device("arm64-emu")
FACTS = ARM.facts()
pytestmark = pytest.mark.skipif(not FACTS.available, reason=f"arm64-emu unavailable: {FACTS.why}")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, Path, Path]:
    from edgequant import api

    tmp = tmp_path_factory.mktemp("arm")
    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=16, size=16), tmp / "conv.onnx")
    data = tmp / "data.npz"
    np.savez(data, input=np.random.default_rng(0).normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32))
    out = tmp / "conv.arm64.onnx"
    api.quantize(model, out, mode="static", calib=str(data), target="arm64")
    return model, out, data


def test_facts_say_emulated_and_untimed() -> None:
    assert FACTS.kind == "arm64-emu" and FACTS.emulated and not FACTS.can_time
    with pytest.raises(Exception, match="emulated"):
        ARM.time_interleaved(["x.onnx"], {})


def test_same_file_same_outputs_as_on_x86(quantized) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model, out, data = quantized
    src = open_source(str(data), graph_inputs(load_model(model)))
    on_arm = ARM.outputs([out, model], src)
    on_x86 = get_device("cpu").outputs([out, model], src)
    assert on_arm.count == on_x86.count == 8
    for a, b in zip(on_arm.outputs, on_x86.outputs):
        x, y = a["logits"].ravel(), b["logits"].ravel()
        assert float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) > 0.999
    # FP32 is FP32 on both ISAs (up to summation order)
    np.testing.assert_allclose(on_arm.outputs[1]["logits"], on_x86.outputs[1]["logits"], rtol=1e-3, atol=1e-4)


def test_coverage_as_the_arm64_build_fuses_it(quantized) -> None:
    _, out, _ = quantized
    cov = ARM.coverage(out)
    assert cov.compute_ops == 4 and cov.quantized_compute_ops == 4


def test_run_for_target_arm64_judges_on_the_emulator(quantized, tmp_path: Path) -> None:
    model, _, data = quantized
    rep = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "edgequant", "run", str(model), "--calib", str(data), "--target",
                           "arm64", "-o", str(rep), "--runs", "5", "--warmup", "1"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((rep / "report.json").read_text())
    assert report["device"] == {"name": "arm64-emu", "kind": "arm64-emu", "emulated": True}
    static = next(v for v in report["variants"] if v["name"] == "static")
    assert static["measured_on"] == {"outputs": "arm64-emu", "latency": "cpu"}
    assert static["int8_coverage"]["quantized_compute_ops"] == static["int8_coverage"]["compute_ops"] == 4
