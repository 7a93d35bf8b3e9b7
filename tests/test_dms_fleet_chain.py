import json
from pathlib import Path

import pytest

from edgequant.dms.frame_pipeline import recommended_paths
from edgequant.errors import EdgequantError


def _report(folder: Path, fp32: str, recommended: str, int8_path: str) -> None:
    folder.mkdir(parents=True)
    folder.joinpath("report.json").write_text(json.dumps({
        "model": {"path": f"/models/{fp32}"}, "recommended": recommended,
        "variants": [{"name": "fp32", "path": f"/models/{fp32}"}, {"name": "static", "path": int8_path}]}))


def test_recommended_paths_follow_each_report(tmp_path):
    _report(tmp_path / "a", "det.onnx", "static", "/out/det.static.onnx")
    _report(tmp_path / "b", "mesh.onnx", "fp32", "/out/mesh.static.onnx")
    fp32 = (Path("/models/det.onnx"), Path("/models/mesh.onnx"))
    assert recommended_paths(tmp_path, fp32) == (Path("/out/det.static.onnx"), Path("/models/mesh.onnx"))
    with pytest.raises(EdgequantError, match="iris.onnx"):
        recommended_paths(tmp_path, (*fp32, Path("/models/iris.onnx")))
