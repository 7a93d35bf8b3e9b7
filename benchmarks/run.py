"""edgequant benchmark suite: FP32 vs ORT's default INT8 flow vs edgequant's recipes.

    benchmarks/run.sh                 # exports models if needed, then runs this
    .venv/bin/python benchmarks/run.py [--models resnet18,mobilenet_v2,encoder] [--quick]

Writes benchmarks/results/[vnni/|amx/]results.json and RESULTS.md (per ISA). Models come from
benchmarks/export_models.py (torch, in benchmarks/.venv); quantized variants go to
benchmarks/.work/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import bench_dms
import numpy as np
import onnx
from bench_data import samples
from bench_report import fidelity, isa_results_dir, machine, outputs, profile, write_markdown
from bench_timing import interleaved, speedup_ci
from bench_variants import (
    CNN_VARIANTS,
    ENCODER_VARIANTS,
    edgequant_quantize,
    edgequant_static,
    ort_default_static,
)

from edgequant.qdq import coverage

MODELS = {  # name: (input kind, variants, rounds at 1 thread, classifier?)
    "resnet18": ("image", CNN_VARIANTS, 80, True),
    "mobilenet_v2": ("image", CNN_VARIANTS, 200, True),
    "mobilenet_v3_small": ("image", CNN_VARIANTS, 200, True),   # dynamo export, opset 20 (issue 14)
    "encoder": ("tokens", ENCODER_VARIANTS, 60, False),
}
SELECTIVE_TOO = ("mobilenet_v2", "mobilenet_v3_small")  # CNNs whose depthwise/stem convs are slower in INT8
BATCH = 8               # throughput at this batch, 1 thread (models whose batch dimension is not fixed)
DMS_MODELS = ("face_landmark", "iris_landmark", "face_detection_short_range")
DMS_ROUNDS = 200
PRELU_MODELS = ("face_landmark", "iris_landmark")
for _name in DMS_MODELS:  # variants need the model's own feeds (selective times on them): built lazily
    MODELS[_name] = ("dms", None, DMS_ROUNDS, False)
#: The variant each model's verdict and goals are judged on.
PRIMARY = {"resnet18": "edgequant", "mobilenet_v2": "edgequant", "mobilenet_v3_small": "edgequant",
           "encoder": "edgequant",
           **{n: "edgequant_selective" for n in DMS_MODELS}}
GOALS = {"resnet18": 1.75, "mobilenet_v2": 1.1, "mobilenet_v3_small": 1.0, "encoder": 1.6}
SIZE_GOAL = 3.9
CALIB_N, EVAL_N = 32, 16


def _qdq_left(cov) -> int:
    return cov.op_counts.get("QuantizeLinear", 0) + cov.op_counts.get("DequantizeLinear", 0) \
        + cov.op_counts.get("DynamicQuantizeLinear", 0)


def _pooled(hidden: list[np.ndarray], feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Sentence embeddings (mask-weighted mean over tokens): what a MiniLM is used for."""
    out = []
    for h, f in zip(hidden, feeds):
        m = f["attention_mask"][0].astype(np.float32)[:, None]
        out.append((h[0] * m).sum(0) / m.sum())
    return out


def _out(path: str, feeds: list[dict[str, np.ndarray]], kind: str) -> list[np.ndarray]:
    got = outputs(path, feeds)
    return _pooled(got, feeds) if kind == "tokens" else got


def bench_model(name: str, threads: list[int], quick: bool) -> dict:
    kind, variants, rounds, classify = MODELS[name]
    src = HERE / ".models" / f"{name}.onnx"
    work = HERE / ".work" / name
    work.mkdir(parents=True, exist_ok=True)
    task = None
    if kind == "dms":
        src = bench_dms.model_path(name)
        calib, _ = bench_dms.feeds(name, "calibration", 8 if quick else CALIB_N)
        task_feeds, task_labels = bench_dms.feeds(name, "evaluation", 16 if quick else None)
        evals = task_feeds[:: max(1, len(task_feeds) // EVAL_N)][:EVAL_N]
        task = (task_feeds, task_labels, bench_dms.all_outputs(src, task_feeds))
        variants = {"ort_default_static": ort_default_static,
                    "edgequant": edgequant_quantize("static"),
                    "edgequant_selective": bench_dms.edgequant_selective(evals[0], 20 if quick else 45)}
        if name == "face_detection_short_range":   # depthwise convs: run/tune's static-per-tensor candidate
            variants["edgequant_per_tensor"] = edgequant_static(reduce_range=True, per_channel=False)
        if name in PRELU_MODELS:
            variants["fp32_prelu_decomposed"] = bench_dms.fp32_prelu_decomposed
            variants["selective_prelu_decomposed"] = bench_dms.selective_on_prelu_decomposed(evals[0], 20 if quick else 45)
    else:
        calib = samples(kind, 8 if quick else CALIB_N, seed=1)
        evals = samples(kind, 4 if quick else EVAL_N, seed=1000)
        if name in SELECTIVE_TOO:
            variants = {**variants, "edgequant_selective": bench_dms.edgequant_selective(evals[0], 20 if quick else 60)}
    paths = {"fp32": src}
    info: dict[str, dict] = {"fp32": {"recipe": "original"}}
    for vname, build in variants.items():
        out = work / f"{vname}.onnx"
        t0 = time.perf_counter()
        info[vname] = build(src, out, calib)
        info[vname]["quantize_seconds"] = time.perf_counter() - t0
        paths[vname] = out
        print(f"[{name}] built {vname} in {info[vname]['quantize_seconds']:.1f}s", flush=True)

    ref = _pooled(outputs(str(src), evals), evals) if kind == "tokens" else outputs(str(src), evals)
    res: dict = {"variants": {}, "source": str(src.relative_to(HERE.parent)), "primary": PRIMARY[name]}
    size0 = src.stat().st_size
    for vname, p in paths.items():
        cov = coverage(p)
        v = {"name": vname, "path": str(p.relative_to(HERE.parent)), "size_bytes": p.stat().st_size,
             "compression": size0 / p.stat().st_size,
             "coverage": {"quantized": cov.quantized_compute_ops, "total": cov.compute_ops,
                          "float_nodes": cov.float_compute_nodes, "qdq_left": _qdq_left(cov),
                          "ops": cov.op_counts},
             "fidelity": None if vname == "fp32" else fidelity(ref, _out(str(p), evals, kind), classify),
             "latency": {}, "speedup": {}, **info[vname]}
        if task is not None:
            v["task_metric"] = bench_dms.task_metric(name, p, task[2], task[0], task[1])
        res["variants"][vname] = v

    feeds = evals[0]
    res["loadavg_before"] = os.getloadavg()
    for t in threads:
        n = max(10, (rounds if t == 1 else rounds * 2 // 3) // (5 if quick else 1))
        timings = interleaved({k: str(p) for k, p in paths.items()}, feeds, threads=t, rounds=n)
        for vname, tm in timings.items():
            res["variants"][vname]["latency"][str(t)] = tm.summary()
            if vname != "fp32":
                res["variants"][vname]["speedup"][str(t)] = speedup_ci(timings["fp32"], tm)
        print(f"[{name}] {t} thread(s): " + ", ".join(
            f"{k} {tm.median:.2f}ms" for k, tm in timings.items()), flush=True)
    res["batch"] = batch_throughput(paths, evals, work, rounds=max(10, rounds // (4 * (5 if quick else 1))))
    res["loadavg_after"] = os.getloadavg()
    eq = res["variants"][PRIMARY[name]]
    res["recipe"] = eq["recipe"]
    s1 = eq["speedup"].get("1", {})
    ok_fast = s1.get("ci95_low", 0) > 1.0
    ok_acc = (eq["fidelity"] or {}).get("cosine", 0) >= 0.99
    if "task_metric" in eq:
        ok_acc = eq["task_metric"].get("within_budget", ok_acc)
    if "no faster INT8 model found" in eq["recipe"]:
        res["verdict"] = "keep FP32: " + eq["selective"]["reason"]
        return res
    res["verdict"] = ("use edgequant INT8" if ok_fast and ok_acc else
                      "keep FP32: INT8 not measurably faster" if not ok_fast else
                      "keep FP32: INT8 output too far from FP32")
    return res


def _batched_copy(src: Path, dst: Path) -> Path:
    """The model with its batch dimension (dim 0 of every input and output) left free."""
    model = onnx.load(str(src))
    for v in (*model.graph.input, *model.graph.output):
        if v.type.tensor_type.shape.dim:
            v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]   # shapes inferred for batch 1 would contradict the feeds
    onnx.save(model, str(dst))
    return dst


def batch_throughput(paths: dict[str, Path], evals: list[dict[str, np.ndarray]], work: Path, *,
                     rounds: int) -> dict:
    """Images (samples) per second at batch BATCH, 1 thread, every variant interleaved with FP32.
    Where the export fixed batch 1 inside the graph (a Reshape to [1, ...]), says so instead."""
    if len(evals) < BATCH:
        return {"skipped": f"fewer than {BATCH} evaluation samples"}
    feeds = {k: np.concatenate([e[k] for e in evals[:BATCH]]) for k in evals[0]}
    batched = {k: _batched_copy(Path(p), work / f"{k}.batch.onnx") for k, p in paths.items()}
    try:
        outputs(str(batched["fp32"]), [feeds])
    except Exception as exc:  # noqa: BLE001 - the export pins batch 1
        return {"skipped": f"batch {BATCH} does not run: the export fixes batch 1 in the graph "
                           f"({' '.join(str(exc).split())[:160]})"}
    timings = interleaved({k: str(p) for k, p in batched.items()}, feeds, threads=1, rounds=rounds)
    out = {"batch": BATCH, "threads": 1, "rounds": rounds, "variants": {}}
    for k, tm in timings.items():
        entry = {"median_ms": tm.median, "samples_per_s": BATCH * 1000.0 / tm.median}
        if k != "fp32":
            entry["speedup"] = speedup_ci(timings["fp32"], tm)
        out["variants"][k] = entry
    print(f"[batch {BATCH}] " + ", ".join(f"{k} {v['samples_per_s']:.0f}/s" for k, v in out["variants"].items()),
          flush=True)
    return out


def goals(results: dict) -> list[dict]:
    out = []
    for name, mres in results["models"].items():
        eq = mres["variants"][mres["primary"]]
        sp = eq["speedup"].get("1", {}).get("speedup", 0)
        if name in GOALS:
            out.append({"model": name, "goal": f">= {GOALS[name]}x at 1 thread", "measured": f"{sp:.2f}x",
                        "met": sp >= GOALS[name]})
        out.append({"model": name, "goal": f"never below FP32 ({', '.join(eq['speedup'])} threads)",
                    "measured": ", ".join(f"{t}T {s['speedup']:.2f}x" for t, s in eq["speedup"].items()),
                    "met": all(s["speedup"] >= 1.0 for s in eq["speedup"].values())
                    or all(s["ci95_high"] >= 1.0 for s in eq["speedup"].values())})
        if "task_metric" in eq:
            tm = eq["task_metric"]
            out.append({"model": name, "goal": tm.get("budget", "report") + f" ({tm['metric']})",
                        "measured": f"{tm['value']:.3f}", "met": tm.get("within_budget", True)})
            continue
        out.append({"model": name, "goal": f">= {SIZE_GOAL}x smaller", "measured": f"{eq['compression']:.2f}x",
                    "met": eq["compression"] >= SIZE_GOAL})
        out.append({"model": name, "goal": "cosine >= 0.99 vs FP32",
                    "measured": f"{eq['fidelity']['cosine']:.4f}", "met": eq["fidelity"]["cosine"] >= 0.99})
    return out


def worst_case_profile(results: dict, quick: bool) -> dict:
    """Profile edgequant's model with the lowest 1-thread speedup, and its FP32 original."""
    name = min(results["models"], key=lambda n: results["models"][n]["variants"]["edgequant"]["speedup"]["1"]["speedup"])
    kind = MODELS[name][0]
    mres = results["models"][name]
    feeds = bench_dms.feeds(name, "evaluation", 1)[0][0] if kind == "dms" else samples(kind, 1, seed=1000)[0]
    runs = 5 if quick else 20
    prof_dir = HERE / ".work" / "profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    q = profile(str(HERE.parent / mres["variants"]["edgequant"]["path"]), feeds, 1, runs,
                str(prof_dir / f"profile_{name}_edgequant"))
    f = profile(str(HERE.parent / mres["variants"]["fp32"]["path"]), feeds, 1, runs,
                str(prof_dir / f"profile_{name}_fp32"))
    return {"model": name, "variant": "edgequant", "runs": runs, "total_ms": q["total_ms"], "ops": q["ops"],
            "fp32_total_ms": f["total_ms"], "fp32_ops": f["ops"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="few samples and rounds (smoke test)")
    ap.add_argument("--out", default=None,
                    help="results folder (default: results/ on AVX2 machines, results/vnni/ on VNNI machines, "
                         "results/amx/ on VNNI machines with AMX-INT8 tiles: results are kept per ISA)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(isa_results_dir(HERE / "results", machine()))
    t0 = time.perf_counter()
    threads = [int(t) for t in args.threads.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"schema": "edgequant.benchmarks/1", "machine": machine(), "loadavg_start": os.getloadavg(),
               "config": {"threads": threads, "quick": args.quick,
                          "rounds": {k: v[2] for k, v in MODELS.items()},
                          "calibration_samples": CALIB_N, "eval_samples": EVAL_N,
                          # runs before this key existed timed >1 thread with idle sessions still spinning
                          "idle_workers": "stopped after each run (session.force_spinning_stop)",
                          "inputs": "CNNs: synthetic images (smooth fields + shapes, ImageNet-normalized), seeded random "
                                    "weights; encoder: real all-MiniLM-L6-v2 weights (when installed), English "
                                    "sentences padded to 128, fidelity on mean-pooled sentence embeddings"},
               "models": {}}
    for name in args.models.split(","):
        if MODELS[name][0] == "dms" and not bench_dms.available(name):
            print(f"skip {name}: .cache/dms missing (python -m edgequant.dms.build)", flush=True)
            continue
        results["models"][name] = bench_model(name, threads, args.quick)
    results["goals"] = goals(results)
    results["profile"] = worst_case_profile(results, args.quick)
    results["elapsed_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_markdown(results, out / "RESULTS.md")
    print(f"wrote {out / 'RESULTS.md'} in {results['elapsed_s']:.0f}s")


if __name__ == "__main__":
    onnx_version = onnx.__version__  # fail early if the main venv isn't used
    main()
