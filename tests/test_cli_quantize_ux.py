"""What a new user trips over with `quantize`: typos, an existing output, a folder as -o, a mode
that quantizes nothing, output piped to a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx_models


def edgequant(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture
def conv(tmp_path: Path) -> tuple[Path, Path]:
    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=8, size=8), tmp_path / "conv.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).normal(0, 1, (4, 1, 3, 8, 8)).astype(np.float32))
    return model, data


@pytest.mark.parametrize("flag, value, needle", [("--op-types", "Convv", "did you mean Conv"),
                                                 ("--exclude", "conv9", "did you mean"),
                                                 ("--exclude", "nosuchnode", "no node of that name")])
def test_typos_are_errors_with_near_matches(conv, tmp_path: Path, flag: str, value: str, needle: str) -> None:
    model, data = conv
    proc = edgequant("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--calib", data, flag, value)
    assert proc.returncode == 1 and needle in proc.stderr and value in proc.stderr, proc.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_existing_output_needs_force_and_a_folder_is_accepted(conv, tmp_path: Path) -> None:
    model, _ = conv
    first = edgequant("quantize", model, "-o", tmp_path, "--mode", "dynamic")
    out = tmp_path / "conv.dynamic.onnx"
    assert first.returncode == 0 and out.is_file(), first.stderr
    before = out.read_bytes()
    again = edgequant("quantize", model, "-o", out, "--mode", "dynamic")
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert out.read_bytes() == before
    assert edgequant("quantize", model, "-o", out, "--mode", "dynamic", "--force").returncode == 0


def test_dynamic_on_a_model_without_matmul_says_nothing_was_quantized(tmp_path: Path) -> None:
    import onnx

    model = onnx_models.conv_net(opset=13, channels=8, size=8)
    keep = [n for n in model.graph.node if n.op_type not in ("Flatten", "Gemm")]      # convs only
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.output[0].name = keep[-1].output[0]
    model.graph.output[0].type.tensor_type.shape.Clear()
    path = tmp_path / "convs.onnx"
    onnx.save(model, str(path))
    proc = edgequant("quantize", path, "-o", tmp_path / "d.onnx", "--mode", "dynamic")
    assert proc.returncode == 0
    assert "nothing was quantized" in proc.stderr and "--mode static" in proc.stderr


def test_piped_output_is_not_hard_wrapped(conv, tmp_path: Path) -> None:
    model, data = conv
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "out"
    deep.mkdir(parents=True)
    proc = edgequant("quantize", model, "-o", deep / "q.onnx", "--mode", "static", "--calib", data)
    assert proc.returncode == 0
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("wrote"))
    assert str(deep / "q.onnx") in line and "W=int8" in line       # one line, path whole


def test_debug_is_accepted_after_the_command(tmp_path: Path) -> None:
    plain = edgequant("inspect", tmp_path / "nosuch.onnx")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    debug = edgequant("inspect", tmp_path / "nosuch.onnx", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "no such option" not in debug.stderr


def test_json_on_quantize_and_run_and_run_names_the_recommended_model(conv, tmp_path: Path) -> None:
    import json

    model, data = conv
    q = edgequant("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--calib", data,
                  "--json", tmp_path / "q.json")
    doc = json.loads((tmp_path / "q.json").read_text())
    assert q.returncode == 0 and doc["output"] == str(tmp_path / "q.onnx") and doc["config"]["mode"] == "static"
    r = edgequant("run", model, "--calib", data, "-o", tmp_path / "rep", "--runs", "3", "--warmup", "1",
                  "--json", tmp_path / "run.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "run.json").read_text())
    rec = next(v for v in report["variants"] if v["name"] == report["recommended"])
    assert f"recommended model: {rec['path']}" in r.stdout


def test_top5_and_metric_typos() -> None:
    from edgequant.errors import EdgequantError
    from edgequant.measure.accuracy import load_metric

    scores = np.eye(10, dtype=np.float32)[None].repeat(2, 0)[:, :6, :].reshape(12, 10)   # argmax = row % 6
    labels = np.array([(i % 6 + 3) % 10 for i in range(12)])                          # never the top-1
    assert load_metric("top1")({"y": scores}, labels).value == 0.0
    assert load_metric("top5")({"y": scores + np.linspace(0, 0.5, 10)[None]}, labels).value == 0.5  # top-5 = {r, 9, 8, 7, 6}
    with pytest.raises(EdgequantError, match="did you mean top1"):
        load_metric("topp1")
    with pytest.raises(EdgequantError, match="did you mean edgequant.dms.metrics:detector_accuracy"):
        load_metric("edgequant.dms.metrics:detector_acuracy")


def test_equalize_and_mse_ranges_from_the_command_line(conv, tmp_path: Path) -> None:
    model, data = conv
    proc = edgequant("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--calib", data,
                     "--no-per-channel", "--equalize", "--calib-method", "mse")
    assert proc.returncode == 0, proc.stderr
    assert "cross-layer equalization" in proc.stderr and "MSE range search" in proc.stderr
    bad = edgequant("quantize", model, "-o", tmp_path / "r.onnx", "--mode", "static", "--calib", data,
                    "--calib-method", "mse", "--format", "qoperator")
    assert bad.returncode == 1 and "--calib-method mse needs --format qdq" in bad.stderr, bad.stderr
