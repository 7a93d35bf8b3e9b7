"""OpenVINO execution provider vs ORT's CPU EP on FP32 and edgequant INT8 models (issue 5, item 6).

    benchmarks/.venv-ov/bin/python benchmarks/ep_openvino.py      # venv: pip install onnxruntime-openvino

onnxruntime-openvino is its own onnxruntime build (1.24.x here), so it cannot share the project's
venv (onnxruntime 1.32). In this process both EPs come from that build and are timed
interleaved (1 thread each). Writes ep_openvino.json and EP_OPENVINO.md in the ISA's results folder
(results/, vnni/, amx/). The INT8 models are the suite's (``bash benchmarks/run.sh`` on this machine).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import samples  # noqa: E402
from bench_machine import isa_results_dir, machine  # noqa: E402

DMS = HERE.parent / ".cache" / "dms"
MODELS = {  # label: (fp32 path, {variant: quantized path}, feeds factory, rounds)
    "resnet18": (".models/resnet18.onnx", {"int8": ".work/resnet18/edgequant.onnx",
                                           "ort_default": ".work/resnet18/ort_default_static.onnx"}, "image", 30),
    "mobilenet_v2": (".models/mobilenet_v2.onnx", {"int8": ".work/mobilenet_v2/edgequant.onnx",
                                                   "ort_default": ".work/mobilenet_v2/ort_default_static.onnx"}, "image", 80),
    "mobilenet_v3_small": (".models/mobilenet_v3_small.onnx", {
        "int8": ".work/mobilenet_v3_small/edgequant.onnx",
        "ort_default": ".work/mobilenet_v3_small/ort_default_static.onnx"}, "image", 150),
    "encoder": (".work/encoder/fp32_fused.onnx", {"int8": ".work/encoder/edgequant.onnx"}, "tokens", 30),
    "encoder (unfused fp32 / static QDQ int8)": (".models/encoder.onnx", {"int8": ".work/encoder/ort_default_static.onnx"},
                                                 "tokens", 30),
    "face_landmark": (str(DMS / "models/face_landmark.onnx"), {"int8": ".work/face_landmark/edgequant.onnx"}, "dms", 100),
    "iris_landmark": (str(DMS / "models/iris_landmark.onnx"), {"int8": ".work/iris_landmark/edgequant.onnx"}, "dms", 100),
}


def feeds_for(kind: str, path: Path) -> dict[str, np.ndarray]:
    if kind != "dms":
        return samples(kind, 1, seed=1000)[0]
    data = np.load(DMS / "data" / f"{path.stem}.evaluation.npz")
    k = next(x for x in data.files if x != "labels")
    return {k: data[k][:1]}


def session(path: Path, ep: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if ep == "openvino":
        return ort.InferenceSession(str(path), so, providers=["OpenVINOExecutionProvider"],
                                    provider_options=[{"device_type": "CPU", "num_of_threads": "1"}])
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    t_start = time.perf_counter()
    res: dict = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "machine": machine(),
                 "models": {}}
    for label, (fp, quantized, kind, rounds) in MODELS.items():
        paths = {"fp32": HERE / fp if not os.path.isabs(fp) else Path(fp)} | {v: HERE / q for v, q in quantized.items()}
        if not (paths["fp32"].exists() and paths["int8"].exists()):
            print(f"skip {label}: missing {[str(p) for p in paths.values() if not p.exists()]}")
            continue
        paths = {v: p for v, p in paths.items() if p.exists()}
        feeds = feeds_for(kind, paths["fp32"])
        sess, errors = {}, {}
        for v, p in paths.items():
            for ep in ("cpu", "openvino"):
                try:
                    sess[f"{v}/{ep}"] = session(p, ep)
                    sess[f"{v}/{ep}"].run(None, feeds)
                except Exception as exc:  # noqa: BLE001
                    errors[f"{v}/{ep}"] = str(exc).splitlines()[0][:300]
                    sess.pop(f"{v}/{ep}", None)
        names = list(sess)
        ref = sess["fp32/cpu"].run(None, feeds)
        for k in names:
            for _ in range(5):
                sess[k].run(None, feeds)
        times = {k: [] for k in names}
        order = np.random.default_rng(1)
        for _ in range(rounds):          # every session once per round, in a fresh random order
            for k in order.permutation(names):
                t0 = time.perf_counter_ns()
                sess[k].run(None, feeds)
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
        base = np.asarray(times["fp32/cpu"])
        rng = np.random.default_rng(0)
        out = {}
        for k in names:
            a = np.asarray(times[k])
            idx = rng.integers(0, a.size, (1000, a.size))
            boots = np.median(base[idx], 1) / np.median(a[idx], 1)
            got = sess[k].run(None, feeds)
            r0, g0 = ref[0].ravel().astype(np.float64), got[0].ravel().astype(np.float64)
            out[k] = {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
                      "speedup_vs_fp32_cpu": float(np.median(base) / np.median(a)),
                      "ci95": [float(x) for x in np.percentile(boots, [2.5, 97.5])],
                      "cosine_vs_fp32_cpu": float(r0 @ g0 / (np.linalg.norm(r0) * np.linalg.norm(g0) + 1e-30))}
        res["models"][label] = {"rounds": rounds, "loadavg": os.getloadavg(), "results": out, "errors": errors}
        print(label, {k: f"{v['median_ms']:.2f}ms {v['speedup_vs_fp32_cpu']:.2f}x" for k, v in out.items()}, errors,
              flush=True)
    res["elapsed_s"] = time.perf_counter() - t_start
    out_dir = isa_results_dir(HERE / "results", res["machine"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ep_openvino.json").write_text(json.dumps(res, indent=2))
    mach = res["machine"]
    lines = ["# OpenVINO execution provider vs CPU EP", "",
             (f"`benchmarks/.venv-ov/bin/python benchmarks/ep_openvino.py` ({res['elapsed_s']:.0f} s): onnxruntime-openvino "
             f"{res['onnxruntime']} (its own ORT build; CPU EP rows are that build's, not 1.32's). 1 thread per session,"),
             "every session of a model interleaved in one process (random order per round); speedup vs FP32 on the CPU EP,",
             "95% bootstrap CI; `int8` = edgequant's static/dynamic default from the suite, `ort_default` = onnxruntime's",
             "documented static QDQ flow (the suite's `ort_default_static`);",
             "cosine of the first output vs FP32 CPU EP on one input.", "",
             f"Machine: {mach['cpu']} ({mach['cores']} cores), ISA {' '.join(mach['isa'])}.", ""]
    for label, m in res["models"].items():
        lines += [f"## {label}", "", f"rounds {m['rounds']}, load average {', '.join(f'{x:.2f}' for x in m['loadavg'])}", "",
                  "| model / EP | median ms | p90 ms | speedup | 95% CI | cosine |", "|---|---|---|---|---|---|"]
        for k, v in m["results"].items():
            lines.append(f"| {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['speedup_vs_fp32_cpu']:.2f}x | "
                         f"{v['ci95'][0]:.2f}-{v['ci95'][1]:.2f} | {v['cosine_vs_fp32_cpu']:.4f} |")
        for k, e in m["errors"].items():
            lines.append(f"- {k} failed: {e}")
        lines.append("")
    (out_dir / "EP_OPENVINO.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
