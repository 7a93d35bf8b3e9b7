"""`edgequant eval` end to end through edgequant.cli.main."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.cli import main

FIDELITY_KEYS = {"cosine", "sqnr_db", "max_abs_err", "top1_agreement"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    ref = mlp(d / "ref.onnx", layers=2, classes=5, seed=0)
    noisy = d / "noisy.onnx"
    m = onnx.load(str(ref))
    rng = np.random.default_rng(1)
    for t in m.graph.initializer:  # a stand-in for a quantized model: same names, perturbed weights
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array((a + rng.normal(0, 0.05, a.shape)).astype(np.float32), t.name))
    onnx.save(m, str(noisy))
    x = np.random.default_rng(0).standard_normal((30, 16)).astype(np.float32)
    np.savez(d / "labeled.npz", x=x, labels=np.random.default_rng(2).integers(0, 5, 30))
    np.savez(d / "unlabeled.npz", x=x)
    return {"ref": ref, "noisy": noisy, "labeled": d / "labeled.npz", "unlabeled": d / "unlabeled.npz"}


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_eval_reference_and_labels(models: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    rc = main(["eval", str(models["noisy"]), "--data", str(models["labeled"]), "--reference", str(models["ref"]),
               "--json", str(out)])
    assert rc == 0
    assert "fidelity" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgequant.eval/1"
    assert set(doc["fidelity"]) == FIDELITY_KEYS | {"intervals"}
    assert doc["fidelity"]["intervals"]["top1_agreement"]["trials"] > 0      # the samples behind the rate
    assert 0.5 < doc["fidelity"]["cosine"] < 1.0 and doc["fidelity"]["top1_agreement"] is not None
    acc = doc["accuracy"]
    assert acc["metric"] == "top1" and 0 <= acc["value"] <= 1
    assert acc["drop"] == pytest.approx(acc["reference_value"] - acc["value"])
    assert doc["data"] == {"spec": str(models["labeled"]), "samples": 30, "has_labels": True,
                           "synthetic": False, "limit": None}
    assert {"cpu", "isa", "onnxruntime", "threads"} <= set(doc["machine"])


def test_eval_identical_is_exact(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", str(models["ref"]), "--data", str(models["unlabeled"]), "--reference", str(models["ref"]),
                 "--limit", "7", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())  # strict JSON: +inf dB is written capped
    assert doc["fidelity"]["cosine"] == pytest.approx(1.0) and doc["fidelity"]["max_abs_err"] == 0.0
    assert doc["fidelity"]["sqnr_db"] == 200.0 and doc["fidelity"]["top1_agreement"] == 1.0
    assert doc["accuracy"] is None and doc["data"]["samples"] == 7


def test_eval_user_metric_without_labels(models: dict[str, Path], tmp_path: Path) -> None:
    metric = tmp_path / "my_metric.py"
    metric.write_text(textwrap.dedent("""
        import numpy as np

        def mean_abs_vs_ref(outputs, labels, reference):
            return float(np.abs(outputs["y"] - reference["y"]).mean()), False
    """))
    out = tmp_path / "e.json"
    assert main(["eval", str(models["noisy"]), "--data", str(models["unlabeled"]), "--reference",
                 str(models["ref"]), "--metric", f"{metric}:mean_abs_vs_ref", "--json", str(out)]) == 0
    acc = json.loads(out.read_text())["accuracy"]
    assert acc["metric"] == "mean_abs_vs_ref" and acc["higher_is_better"] is False
    assert acc["value"] > 0 and acc["reference_value"] == 0.0


def test_eval_random_data(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", str(models["noisy"]), "--data", "random:5", "--reference", str(models["ref"]),
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["data"]["synthetic"] is True and doc["accuracy"] is None
    assert any("synthetic" in n for n in doc["notes"])


@pytest.mark.parametrize("args,needles", [
    (["eval", "{tmp}/missing.onnx", "--data", "{unlabeled}"], ["missing.onnx", "no such file"]),
    (["eval", "{ref}", "--data", "{unlabeled}"], ["nothing to measure"]),
    (["eval", "{ref}", "--data", "{unlabeled}", "--reference", "{tmp}/nope.onnx"], ["nope.onnx"]),
    (["eval", "{ref}", "--data", "{labeled}", "--metric", "no_such_module_xyz:f"], ["no_such_module_xyz"]),
    (["eval", "{ref}", "--data", "{tmp}/none.npz", "--reference", "{ref}"], ["none.npz"]),
])
def test_eval_bad_inputs(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         args: list[str], needles: list[str]) -> None:
    subst = {k: str(v) for k, v in models.items()} | {"tmp": str(tmp_path)}
    out = tmp_path / "e.json"
    assert main([a.format(**subst) for a in args] + ["--json", str(out)]) == 1
    _one_line_error(capsys, *needles)
    assert not out.exists()
