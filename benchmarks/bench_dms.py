"""The MediaPipe DMS models in the suite: data, task metrics and the selective-INT8 builder.

Models and data come from ``python -m edgequant.dms.build`` (``.cache/dms``; see
examples/dms/README.md). Speed is measured like the other models; accuracy uses the DMS task
metrics (landmark displacement vs FP32 in crop pixels, detector face/no-face accuracy).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from bench_data import ListReader
from bench_timing import make_session

ROOT = Path(__file__).resolve().parent.parent
DMS = ROOT / ".cache" / "dms"
METRICS = {"face_landmark": "face_landmark_displacement", "iris_landmark": "iris_landmark_displacement",
           "face_detection_short_range": "detector_accuracy"}
BUDGET_PX = {"face_landmark": 1.0, "iris_landmark": 1.0}


def available(name: str) -> bool:
    return (DMS / "models" / f"{name}.onnx").exists() and (DMS / "data" / f"{name}.evaluation.npz").exists()


def model_path(name: str) -> Path:
    return DMS / "models" / f"{name}.onnx"


def feeds(name: str, split: str, n: int | None = None) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Samples of one split as batch-1 feeds (evenly spaced when ``n`` is given), and labels."""
    data = np.load(DMS / "data" / f"{name}.{split}.npz")
    keys = [k for k in data.files if k != "labels"]
    total = data[keys[0]].shape[0]
    idx = np.arange(total) if n is None or n >= total else np.linspace(0, total - 1, n).round().astype(int)
    labels = data["labels"][idx] if "labels" in data.files else None
    return [{k: data[k][i:i + 1] for k in keys} for i in idx], labels


def all_outputs(path: str | Path, fs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    sess = make_session(str(path), threads=2)
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(None, f) for f in fs]
    return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(names)}


def task_metric(name: str, path: str | Path, ref: dict[str, np.ndarray], fs: list[dict[str, np.ndarray]],
                labels: np.ndarray | None) -> dict:
    from edgequant.dms import metrics

    fn = getattr(metrics, METRICS[name])
    r = fn(all_outputs(path, fs), labels, ref)
    out = {"metric": r.name if hasattr(r, "name") else METRICS[name], "value": float(r.value),
           "details": {k: v for k, v in (r.details or {}).items() if isinstance(v, (int, float, str, type(None)))}}
    if name in BUDGET_PX:
        out["budget"] = f"<= {BUDGET_PX[name]} px"
        out["within_budget"] = bool(r.value <= BUDGET_PX[name])
    return out


def edgequant_selective(feeds_one: dict[str, np.ndarray], time_budget_s: float = 45.0, **base):
    """Builder: edgequant.qdq.selective; when no mix beats FP32, the FP32 model is the variant."""
    from edgequant.qdq.selective import quantize_selective

    def build(src: Path, out: Path, calib) -> dict:
        s = quantize_selective(src, out, lambda: ListReader(calib), feeds=feeds_one,
                               base_options={"reduce_range": True, **base}, time_budget_s=time_budget_s)
        facts = {"recipe": "edgequant.qdq.selective.quantize_selective(reduce_range=True)",
                 "selective": {k: v for k, v in s.to_dict().items() if k not in ("base", "node_table")},
                 "node_table": s.node_table, "warnings": s.warnings}
        if not s.found:
            shutil.copyfile(src, out)
            facts["recipe"] += " -> no faster INT8 model found, FP32 kept"
        return facts
    return build


def fp32_prelu_decomposed(src: Path, out: Path, calib) -> dict:
    """FP32, PRelu rewritten as Relu/Sub/Mul/Add (exact; works around ORT 1.32's slow PRelu)."""
    import onnx

    from edgequant.rewrites import decompose_prelu

    m = onnx.load(str(src))
    n = decompose_prelu(m)
    onnx.save(m, str(out))
    return {"recipe": f"edgequant.rewrites.decompose_prelu (FP32, {n} PRelu rewritten)"}


def selective_on_prelu_decomposed(feeds_one: dict[str, np.ndarray], time_budget_s: float = 45.0):
    """Selective INT8 on the PRelu-decomposed graph (its float islands are cheaper)."""
    import tempfile

    import onnx

    from edgequant.rewrites import decompose_prelu

    inner = edgequant_selective(feeds_one, time_budget_s)

    def build(src: Path, out: Path, calib) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            m = onnx.load(str(src))
            decompose_prelu(m)
            dec = Path(tmp) / "decomposed.onnx"
            onnx.save(m, str(dec))
            facts = inner(dec, out, calib)
        facts["recipe"] = "decompose_prelu + " + facts["recipe"].replace("FP32 kept", "decomposed FP32 kept")
        return facts
    return build
