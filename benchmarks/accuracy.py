"""Keeping every layer INT8: the DMS models under the default static recipe with and without
edgequant's post-training algorithms, per-channel and per-tensor weights, on this machine's CPU EP.

    .venv/bin/python benchmarks/accuracy.py          # writes accuracy.json and ACCURACY.md
    .venv/bin/python benchmarks/accuracy.py --only AdaRound face_landmark   # those rows only, merged in

Results go to the ISA's folder (``results/`` AVX2 and the first AMD VNNI run, ``results/vnni/``,
``results/amx/``): the target rule, and with it the integer kernels and weight zero points, follows the CPU.

Needs the DMS cache (`make test` or `python -m edgequant.dms.build --out .cache/dms`). With
benchmarks/.models/mobilenet_v2.onnx present it also runs that model per-tensor (top-1 agreement
with FP32 on synthetic images: no labelled image set can be fetched here).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edgequant import api  # noqa: E402
from edgequant.measure.machine import machine_facts  # noqa: E402
from edgequant.measure.session import SessionConfig  # noqa: E402
from edgequant.algorithms import adaround, gptq, range_search  # noqa: E402
from edgequant.targets import auto_target  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_machine import isa_results_dir, machine  # noqa: E402

DMS = ROOT / ".cache" / "dms"
MODELS = {
    "face_detector": ("face_detection_short_range", "edgequant.dms.metrics:detector_accuracy", "accuracy, FP32 0.99"),
    "face_landmark": ("face_landmark", "edgequant.dms.metrics:face_landmark_displacement", "px from FP32"),
    "iris_landmark": ("iris_landmark", "edgequant.dms.metrics:iris_landmark_displacement", "px from FP32"),
}
# (label, quantize overrides, weights): ORT's MinMax ranges, then each algorithm added
PER_CHANNEL, PER_TENSOR = True, False
RECIPES = [
    ("MinMax", {"robust_ranges": False}, (PER_CHANNEL, PER_TENSOR)),
    ("robust ranges", {}, (PER_CHANNEL, PER_TENSOR)),
    ("robust ranges + bias correction", {"bias_correction": True}, (PER_CHANNEL, PER_TENSOR)),
    ("MSE ranges", {"calib_method": "mse"}, (PER_CHANNEL, PER_TENSOR)),
    ("MSE ranges, each tensor's own MSE", {"calib_method": "mse", "_own_mse": True}, (PER_CHANNEL,)),
    ("equalization", {"equalize": True}, (PER_TENSOR,)),
    ("equalization + bias correction", {"equalize": True, "bias_correction": True}, (PER_TENSOR,)),
    ("equalization + MSE ranges", {"equalize": True, "calib_method": "mse"}, (PER_TENSOR,)),
    ("AdaRound", {"adaround": True}, (PER_CHANNEL, PER_TENSOR)),
    ("MSE ranges + AdaRound", {"calib_method": "mse", "adaround": True}, (PER_CHANNEL,)),
    ("equalization + AdaRound", {"equalize": True, "adaround": True}, (PER_TENSOR,)),
    ("GPTQ", {"gptq": True}, (PER_CHANNEL, PER_TENSOR)),
    ("MSE ranges + GPTQ", {"calib_method": "mse", "gptq": True}, (PER_CHANNEL,)),
    ("equalization + GPTQ", {"equalize": True, "gptq": True}, (PER_TENSOR,)),
]
MOBILENET = ROOT / "benchmarks" / ".models" / "mobilenet_v2.onnx"
MOBILENET_RECIPES = [
    ("robust ranges", {}),
    ("equalization (ReLU6 -> ReLU)", {"equalize_relu6": True}),
    ("equalization (ReLU6 -> ReLU) + bias correction", {"equalize_relu6": True, "bias_correction": True}),
]


def _note(result, prefix: str) -> str:
    return next((n for n in result.notes if n.startswith(prefix)), "")


def mobilenet_rows(work: Path) -> list[dict]:
    """Per-tensor weights on mobilenet_v2: logit SQNR and top-1 agreement with FP32 on 200 held-out
    synthetic images. The checked-in export has seeded random weights (see export_models.py), so
    this shows the algorithms run on its graph, not the trained-model effect."""
    import numpy as np

    from bench_data import image
    from edgequant.devices import local_cpu

    for name, seed, n in (("calib", 0, 100), ("eval", 1, 200)):
        path = work / f"mobilenet_v2.{name}.npz"
        if not path.exists():
            rng = np.random.default_rng(seed)
            np.savez(path, input=np.stack([image(rng) for _ in range(n)]))
    feeds = [{"input": x} for x in np.load(work / "mobilenet_v2.eval.npz")["input"]]
    ref = next(iter(local_cpu().outputs([MOBILENET], feeds).outputs[0].values())).reshape(len(feeds), -1)
    ref_top1 = ref.argmax(axis=1)
    classes = len(set(ref_top1.tolist()))     # random weights: FP32 may give every image the same class
    rows = []
    for per_channel, (label, overrides) in [(False, r) for r in MOBILENET_RECIPES] + [(True, MOBILENET_RECIPES[0])]:
        out = work / f"mobilenet_v2.{per_channel}.{label.replace(' ', '_')}.onnx"
        res = api.quantize(MOBILENET, out, mode="static", calib=str(work / "mobilenet_v2.calib.npz"),
                           per_channel=per_channel, force=True, **overrides)
        got = next(iter(local_cpu().outputs([out], feeds).outputs[0].values())).reshape(len(feeds), -1)
        sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
        agree = float((got.argmax(axis=1) == ref_top1).mean())
        rows.append({"model": "mobilenet_v2 (random weights)", "weights": "per-channel" if per_channel else "per-tensor",
                     "recipe": label, "value": float(sqnr), "unit": "dB logit SQNR vs FP32",
                     "int8": "-", "note": (f"top-1 agreement {agree:.2f} (FP32 gives {classes} distinct class(es) to "
                                           f"the {len(feeds)} images); " + _note(res, "cross-layer equalization"))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the rows of ``new`` replacing or joining them, in MODELS/weights/RECIPES order."""
    key = lambda r: (r["model"], r["weights"], r["recipe"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    models, labels = list(MODELS), [label for label, _, _ in RECIPES]

    rows = list(merged.values())

    def order(i: int) -> tuple:          # other models (mobilenet_v2) keep their place, after the DMS ones
        r = rows[i]
        if r["model"] not in models:
            return (len(models), i)
        return (models.index(r["model"]), r["weights"] != "per-channel",
                labels.index(r["recipe"]) if r["recipe"] in labels else len(labels), i)
    return [rows[i] for i in sorted(range(len(rows)), key=order)]


def write_markdown(doc: dict, path: Path) -> None:
    """ACCURACY.md from the rows; a hand-written '## Findings' section already there is kept."""
    from edgequant.algorithms import bias_correction, equalization, ranges

    m = doc["machine"]
    lines = ["# Every layer INT8: DMS models with edgequant's post-training algorithms", "",
             f"Machine: {m['cpu']} ({' '.join(m['isa'])}), onnxruntime {m['onnxruntime']}, CPU EP "
             "(`PYTHONPATH=src .venv/bin/python -m edgequant doctor`: target "
             f"{doc.get('target', 'x86-vnni')}). Command: "
             "`PYTHONPATH=src .venv/bin/python benchmarks/accuracy.py [MODEL ...]` (`--markdown`: this file from "
             "results/accuracy.json). Default static QDQ recipe of the machine's target, fully INT8 (every compute "
             "op an integer kernel), calibrated on the DMS calibration splits (detector 101, landmark 99, iris 198 "
             "samples); task metric on the held-out evaluation splits (100, 107, 214 samples): detector accuracy "
             "(FP32 0.99, budget 1 point; one sample = 0.01), landmark displacement from FP32 in pixels of the crop "
             "(budget 1 px). Per-tensor = `--no-per-channel` (one scale per weight tensor).", "",
             "Algorithms (each a standard QDQ model out; the line is what `quantize` prints as a note):", ""]
    mods = (ranges, bias_correction, equalization, range_search, adaround, gptq)
    lines += [f"* {mod.DESCRIPTION}" for mod in mods]
    lines += ["", "Quantize time: seconds for `edgequant quantize` with that recipe (calibration included), one "
              "process, with the 1-minute load average when it ran (2 cores shared with other jobs: noisy); "
              "'-' where the row predates the timing.", "",
              "| model | weights | recipe | metric | INT8 ops | quantize s (load) | what the algorithm reported |",
              "|---|---|---|---|---|---|---|"]

    def said(note: str) -> str:
        return next((note[len(mod.DESCRIPTION) + 2:] for mod in mods if note.startswith(mod.DESCRIPTION)), note)

    def took(r: dict) -> str:
        return f"{r['quantize_s']:.0f} ({r['load']:.1f})" if "quantize_s" in r else "-"

    lines += [f"| {r['model']} | {r['weights']} | {r['recipe']} | {r['value']:.4g} {r['unit']} | {r['int8']} | "
              f"{took(r)} | {said(r.get('note', ''))} |" for r in doc["rows"]]
    old = path.read_text() if path.exists() else ""
    kept = old[old.index("\n## Findings"):] if "\n## Findings" in old else "\n"
    path.write_text("\n".join(lines) + "\n" + kept)


def main() -> int:
    results = isa_results_dir(ROOT / "benchmarks" / "results", machine())
    results.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["--markdown"]:
        write_markdown(json.loads((results / "accuracy.json").read_text()), results / "ACCURACY.md")
        return 0
    work = ROOT / ".work" / "accuracy"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    args = sys.argv[1:]
    recipe_filter = args[args.index("--only") + 1] if "--only" in args else None   # recipe labels containing it
    if recipe_filter is not None:
        args.remove("--only")
        args.remove(recipe_filter)
    only = set(args)                     # model names to run (default: all)
    for name, (stem, metric, unit) in MODELS.items():
        if only and name not in only:
            continue
        fp32 = DMS / "models" / f"{stem}.onnx"
        for per_channel in (True, False):
            for label, overrides, weights in RECIPES:
                if per_channel not in weights or (recipe_filter and recipe_filter not in label):
                    continue
                out = work / f"{stem}.{per_channel}.{label.replace(' ', '_')}.onnx"
                overrides = dict(overrides)
                range_search.CONSUMER_WEIGHTED = not overrides.pop("_own_mse", False)   # the ablation row
                start = time.perf_counter()
                res = api.quantize(fp32, out, mode="static", calib=str(DMS / "data" / f"{stem}.calibration.npz"),
                                   per_channel=per_channel, force=True, **overrides)
                took = time.perf_counter() - start
                ev = api.evaluate(out, str(DMS / "data" / f"{stem}.evaluation.npz"), reference=fp32, metric=metric)
                cov = api.inspect(out).int8_coverage
                rows.append({"model": name, "weights": "per-channel" if per_channel else "per-tensor",
                             "recipe": label, "value": ev.accuracy["value"], "unit": unit,
                             "int8": f"{cov.quantized_compute_ops}/{cov.compute_ops}" if cov else "-",
                             "quantize_s": round(took, 1), "load": os.getloadavg()[0],
                             "note": (_note(res, "learned rounding") or _note(res, "error-compensating rounding")
                                      or _note(res, "cross-layer equalization")
                                      or _note(res, "MSE range search"))})
                print(json.dumps(rows[-1]), flush=True)
    if MOBILENET.exists() and (not only or "mobilenet_v2" in only):
        rows = [r for r in rows if not r["model"].startswith("mobilenet_v2")]
        rows += mobilenet_rows(work)
    if (only or recipe_filter) and (results / "accuracy.json").exists():     # keep the rows not re-run
        rows = merge_rows(json.loads((results / "accuracy.json").read_text())["rows"], rows)
    doc = {"machine": machine_facts(SessionConfig(intra_op_threads=1)), "target": auto_target(), "rows": rows}
    (results / "accuracy.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(doc, results / "ACCURACY.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
