"""Session tuning: measured deployment defaults are valid SessionConfigs; the tuner keeps the default
unless a setting is faster outside the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.measure.session import SessionConfig, make_session
from edgequant.qdq.session_tuning import (
    MEASURED_WINNERS,
    deployment_session_config,
    tune_session,
)


@pytest.mark.parametrize("kind", sorted(MEASURED_WINNERS))
def test_deployment_config_builds_a_session(kind: str, tmp_path: Path) -> None:
    cfg = SessionConfig(**deployment_session_config(kind))
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4))], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    y = make_session(tmp_path / "m.onnx", cfg).run(None, {"x": np.ones((1, 4), np.float32)})[0]
    assert np.allclose(y, 4.0)


def test_deployment_config_threads_override_and_unknown_kind() -> None:
    assert deployment_session_config("cnn-int8", threads=2)["intra_op_threads"] == 2
    assert deployment_session_config("cnn-int8")["graph_optimization"] == "all"
    shared = deployment_session_config("cnn-fp32", shared_cores=True)
    assert shared["intra_op_threads"] == 1 and shared["allow_spinning"] is False
    assert deployment_session_config("transformer-int8", pipeline=True)["allow_spinning"] is False
    assert "allow_spinning" not in deployment_session_config("cnn-int8")
    with pytest.raises(ValueError, match="unknown model kind"):
        deployment_session_config("gpu")


def test_tune_session_identical_settings_keep_default(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (8, 64))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (8, 64))], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    feeds = {"x": np.ones((8, 64), np.float32)}
    # "same" is the default under another name: it can't win by more than 1.5x outside noise
    r = tune_session(tmp_path / "m.onnx", feeds, candidates={"same": {}}, threads=(1, 2), rounds=20, min_gain=1.5)
    assert {t.name for t in r.timings} == {"default@1T", "same@1T", "default@2T", "same@2T"}
    assert r.best in {"default@1T", "default@2T"}
    assert SessionConfig.from_dict(r.best_config).intra_op_threads in (1, 2)
    assert r.to_dict()["timings"][0]["median_ms"] > 0
