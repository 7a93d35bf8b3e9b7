"""Keeping every layer INT8: the DMS models under the default static recipe with and without
edgequant's post-training algorithms, per-channel and per-tensor weights, on this machine's CPU EP.

    .venv/bin/python benchmarks/accuracy.py          # writes results/accuracy.json and ACCURACY.md

Needs the DMS cache (`make test` or `python -m edgequant.dms.build --out .cache/dms`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edgequant import api  # noqa: E402
from edgequant.measure.machine import machine_facts  # noqa: E402
from edgequant.measure.session import SessionConfig  # noqa: E402

DMS = ROOT / ".cache" / "dms"
MODELS = {
    "face_detector": ("face_detection_short_range", "edgequant.dms.metrics:detector_accuracy", "accuracy, FP32 0.99"),
    "face_landmark": ("face_landmark", "edgequant.dms.metrics:face_landmark_displacement", "px from FP32"),
    "iris_landmark": ("iris_landmark", "edgequant.dms.metrics:iris_landmark_displacement", "px from FP32"),
}
# (label, quantize overrides): ORT's MinMax ranges, then each algorithm added
RECIPES = [
    ("MinMax", {"robust_ranges": False}),
    ("robust ranges", {}),
    ("robust ranges + bias correction", {"bias_correction": True}),
]


def main() -> int:
    work = ROOT / ".work" / "accuracy"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (stem, metric, unit) in MODELS.items():
        fp32 = DMS / "models" / f"{stem}.onnx"
        for per_channel in (True, False):
            for label, overrides in RECIPES:
                out = work / f"{stem}.{per_channel}.{label.replace(' ', '_')}.onnx"
                api.quantize(fp32, out, mode="static", calib=str(DMS / "data" / f"{stem}.calibration.npz"),
                             per_channel=per_channel, force=True, **overrides)
                ev = api.evaluate(out, str(DMS / "data" / f"{stem}.evaluation.npz"), reference=fp32, metric=metric)
                cov = api.inspect(out).int8_coverage
                rows.append({"model": name, "weights": "per-channel" if per_channel else "per-tensor",
                             "recipe": label, "value": ev.accuracy["value"], "unit": unit,
                             "int8": f"{cov.quantized_compute_ops}/{cov.compute_ops}" if cov else "-"})
                print(json.dumps(rows[-1]), flush=True)
    doc = {"machine": machine_facts(SessionConfig(intra_op_threads=1)), "rows": rows}
    results = ROOT / "benchmarks" / "results"
    (results / "accuracy.json").write_text(json.dumps(doc, indent=2) + "\n")
    m = doc["machine"]
    lines = ["# Every layer INT8: DMS models with edgequant's post-training algorithms", "",
             f"Machine: {m['cpu']} ({' '.join(m['isa'])}), onnxruntime {m['onnxruntime']}, CPU EP. Command: "
             "`.venv/bin/python benchmarks/accuracy.py`. Default static QDQ recipe of the machine's target "
             "(200 calibration samples), fully INT8 (every compute op an integer kernel); task metric on the "
             "whole evaluation split: detector accuracy (FP32 0.99, budget 1 point), landmark displacement from "
             "FP32 in pixels of the crop (budget 1 px).", "",
             "| model | weights | recipe | metric | INT8 ops |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['weights']} | {r['recipe']} | {r['value']:.4g} {r['unit']} | {r['int8']} |"
              for r in rows]
    (results / "ACCURACY.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
