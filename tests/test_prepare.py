"""The one preparation path: every step recorded, and a failing step never ends the run."""

from __future__ import annotations

from pathlib import Path

import onnx_models
from edgequant.qdq import prepare as prepare_mod


def test_preprocess_failure_with_an_empty_message_falls_back(tmp_path: Path, monkeypatch) -> None:
    """Regression (zoo VAD model): quant_pre_process raised an exception whose message was empty,
    and formatting it with str(exc).splitlines()[0] raised IndexError, ending the whole run."""
    import onnxruntime.quantization.shape_inference as si

    def boom(*args, **kwargs):
        raise RuntimeError("")

    monkeypatch.setattr(si, "quant_pre_process", boom)
    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=4, size=8), tmp_path / "m.onnx")
    prep = prepare_mod.prepare(model, tmp_path, mode="static")
    assert prep.path == tmp_path / "staged.onnx"              # quantizes the un-preprocessed model
    assert prep.warnings[0] == "quant_pre_process failed: RuntimeError"
    assert prep.warnings[-1] == "quantizing the model without ORT pre-processing"


def test_prepare_records_its_steps(tmp_path: Path) -> None:
    model = onnx_models.save(onnx_models.conv_net(opset=12, channels=4, size=8), tmp_path / "m.onnx")
    prep = prepare_mod.prepare(model, tmp_path, mode="static")
    assert prep.passes[0] == "upgrade_opset(12->13)" and prep.passes[1].startswith("quant_pre_process")
    assert any("opset upgraded 12 -> 13" in n for n in prep.notes)
    assert prep.path.is_file() and prep.warnings == []
