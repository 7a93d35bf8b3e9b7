"""Verify on the target: each DMS model quantized for arm64 and for Qualcomm Hexagon (qnn), its task
metric measured on this machine's CPU EP (what edgequant predicts) and on the target's device
(arm64-emu: aarch64 onnxruntime under qemu; qnn-htp: onnxruntime-qnn's HTP simulator), plus the
HTP placement. Accuracy only: neither device's time is latency.

    .venv/bin/python benchmarks/targets.py            # writes results/targets.json and TARGETS.md

Needs the DMS cache (`make test` or `python -m edgequant.dms.build --out .cache/dms`), the qnn extra
and the arm64 root (`make arm64-emu`); a device that is missing is reported, not faked.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edgequant import api  # noqa: E402
from edgequant.devices import get_device  # noqa: E402
from edgequant.measure.machine import machine_facts  # noqa: E402
from edgequant.measure.session import SessionConfig  # noqa: E402

DMS = ROOT / ".cache" / "dms"
MODELS = {
    "face_detector": ("face_detection_short_range", "edgequant.dms.metrics:detector_accuracy"),
    "face_landmark": ("face_landmark", "edgequant.dms.metrics:face_landmark_displacement"),
    "iris_landmark": ("iris_landmark", "edgequant.dms.metrics:iris_landmark_displacement"),
}
# (label, target, device, quantize overrides)
RECIPES = [
    ("arm64 static", "arm64", "arm64-emu", {}),
    ("qnn static A8W8", "qnn", "qnn-htp", {}),
    ("qnn static A16W8", "qnn", "qnn-htp", {"activation_type": "uint16"}),
    ("qnn static A16W8 GPTQ", "qnn", "qnn-htp", {"activation_type": "uint16", "gptq": True}),
]


def main() -> int:
    work = ROOT / ".work" / "targets"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (stem, metric) in MODELS.items():
        fp32 = DMS / "models" / f"{stem}.onnx"
        calib, evals = DMS / "data" / f"{stem}.calibration.npz", DMS / "data" / f"{stem}.evaluation.npz"
        for label, target, device, overrides in RECIPES:
            facts = get_device(device).facts()
            row = {"model": name, "recipe": label, "target": target, "device": device, "metric": metric.split(":")[1]}
            if not facts.available:
                rows.append({**row, "error": f"{device} unavailable: {facts.why}"})
                continue
            out = work / f"{stem}.{label.replace(' ', '_')}.onnx"
            t0 = time.perf_counter()
            api.quantize(fp32, out, mode="static", calib=str(calib), target=target, calib_limit=200, force=True, **overrides)
            x86 = api.evaluate(out, str(evals), reference=fp32, metric=metric, device="cpu")
            dev = api.evaluate(out, str(evals), reference=fp32, metric=metric, device=device)
            row.update(samples=dev.samples, fp32=x86.accuracy["reference_value"], x86=x86.accuracy["value"],
                       on_device=dev.accuracy["value"], higher_is_better=x86.accuracy["higher_is_better"],
                       diff=abs(dev.accuracy["value"] - x86.accuracy["value"]),
                       cosine_x86=x86.fidelity.cosine, cosine_device=dev.fidelity.cosine,
                       seconds=round(time.perf_counter() - t0, 1))
            if device == "qnn-htp":
                row["placement"] = get_device(device).placement(out).to_dict()
            cov = get_device(device).coverage(out)
            row["int8_on_device"] = f"{cov.quantized_compute_ops}/{cov.compute_ops}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows += reference_cnns(work)
    results = ROOT / "benchmarks" / "results"
    doc = {"machine": machine_facts(SessionConfig(intra_op_threads=1)),
           "devices": [f.to_dict() for f in api.devices()], "rows": rows, "presence": presence_rows(work)}
    (results / "targets.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results / "TARGETS.md").write_text(_markdown(doc))
    return 0


def presence_rows(work: Path, output: str = "conv2d_31") -> list[dict]:
    """The face-landmark presence logit on HTP vs FP32 (the output HTP once zeroed): mean and
    per-sample relative error of the files quantized above."""
    import numpy as np

    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    fp32 = DMS / "models" / "face_landmark.onnx"
    if not get_device("qnn-htp").facts().available:
        return []
    evals = open_source(str(DMS / "data" / "face_landmark.evaluation.npz"), graph_inputs(load_model(fp32)))
    ref = get_device("cpu").outputs([fp32], evals).outputs[0][output].astype(np.float64).ravel()
    rows = []
    for label in [r[0] for r in RECIPES if r[2] == "qnn-htp"]:
        path = work / f"face_landmark.{label.replace(' ', '_')}.onnx"
        got = get_device("qnn-htp").outputs([path], evals).outputs[0][output].astype(np.float64).ravel()
        rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)
        rows.append({"recipe": label, "samples": int(ref.size), "fp32_mean": float(ref.mean()),
                     "htp_mean": float(got.mean()), "mean_rel": float(abs(got.mean() - ref.mean()) / abs(ref.mean())),
                     "per_sample_rel_mean": float(rel.mean()), "per_sample_rel_p95": float(np.quantile(rel, 0.95)),
                     "zeros": int(np.sum(got == 0))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def reference_cnns(work: Path, n_calib: int = 32, n_eval: int = 48) -> list[dict]:
    """resnet18 / mobilenet_v2 (benchmarks/.models, exported by run.sh) for arm64: top-1 agreement
    with FP32 on synthetic images, on the x86 CPU EP and inside arm64-emu (label-free)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_data import samples

    rows = []
    for name in ("resnet18", "mobilenet_v2"):
        fp32 = ROOT / "benchmarks" / ".models" / f"{name}.onnx"
        row = {"model": name, "recipe": "arm64 static", "target": "arm64", "device": "arm64-emu", "metric": "top1_agreement"}
        if not fp32.is_file() or not get_device("arm64-emu").facts().available:
            rows.append({**row, "error": "model not exported (bash benchmarks/run.sh) or arm64-emu unavailable"})
            continue
        calib, evals = work / f"{name}.calib.npz", work / f"{name}.eval.npz"
        np.savez(calib, input=np.stack([f["input"] for f in samples("image", n_calib, seed=1)]))
        np.savez(evals, input=np.stack([f["input"] for f in samples("image", n_eval, seed=1000)]))
        out = work / f"{name}.arm64.onnx"
        t0 = time.perf_counter()
        api.quantize(fp32, out, mode="static", calib=str(calib), target="arm64", force=True)
        x86 = api.evaluate(out, str(evals), reference=fp32, device="cpu")
        dev = api.evaluate(out, str(evals), reference=fp32, device="arm64-emu")
        cov = get_device("arm64-emu").coverage(out)
        rows.append({**row, "samples": dev.samples, "fp32": 1.0, "x86": x86.fidelity.top1_agreement,
                     "on_device": dev.fidelity.top1_agreement, "higher_is_better": True,
                     "diff": abs(dev.fidelity.top1_agreement - x86.fidelity.top1_agreement),
                     "cosine_x86": x86.fidelity.cosine, "cosine_device": dev.fidelity.cosine,
                     "int8_on_device": f"{cov.quantized_compute_ops}/{cov.compute_ops}",
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Verified on the target: DMS models on arm64-emu and qnn-htp", "",
             f"Machine: {m['cpu']} ({' '.join(m['isa'])}), onnxruntime {m['onnxruntime']}. Command: "
             "`.venv/bin/python benchmarks/targets.py`. Each model is quantized for the target with edgequant's "
             "defaults (200 calibration samples), then the same file is evaluated on this machine's CPU EP (x86: what "
             "edgequant predicts) and on the target's device, against the FP32 model on the CPU. Task metrics: "
             "detector accuracy on lfw faces vs scikit-image non-faces (higher is better); landmark displacement "
             "from FP32 in pixels of the model's crop (lower is better); resnet18/mobilenet_v2 (seeded random weights, "
             "synthetic images, `bash benchmarks/run.sh` exports them): top-1 agreement with FP32. No latency: both "
             "devices are emulated.", "",
             "| model | recipe | device | samples | FP32 | x86 CPU EP | on device | abs diff | INT8 on device | "
             "CPU fallback (HTP) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['recipe']} | {r['device']} | - | - | - | - | - | - | {r['error']} |")
            continue
        fb = r.get("placement", {})
        fallback = f"{fb['compute_on_cpu']} operators / {fb['cpu_fallback']} nodes (+{fb['io_on_cpu']} graph I/O)" if fb else "-"
        lines.append(f"| {r['model']} | {r['recipe']} | {r['device']} | {r['samples']} | {r['fp32']:.4g} | "
                     f"{r['x86']:.4g} | {r['on_device']:.4g} | {r['diff']:.3g} | {r['int8_on_device']} | {fallback} |")
    if doc.get("presence"):
        lines += ["", "Face-presence logit (face_landmark output `conv2d_31`) on HTP vs FP32 on the CPU, evaluation split:", "",
                  "| recipe | samples | FP32 mean | HTP mean | error of the mean | per-sample error (mean) | per-sample error (p95) | zeros |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} | {r['samples']} | {r['fp32_mean']:.3f} | {r['htp_mean']:.3f} | {100 * r['mean_rel']:.2f}% | "
                  f"{100 * r['per_sample_rel_mean']:.2f}% | {100 * r['per_sample_rel_p95']:.2f}% | {r['zeros']} |"
                  for r in doc["presence"]]
    lines += ["", "Devices:", ""] + [f"- {d['name']}: {d['why']}" for d in doc["devices"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
