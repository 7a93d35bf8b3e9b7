"""Session-settings sweep (issue 5, item 5): which ORT session options win for FP32 and INT8.

    .venv/bin/python benchmarks/session_sweep.py [--quick]

Needs the models built by run.sh (benchmarks/.models, benchmarks/.work/<model>/edgequant.onnx).
For each model it times every (threads, setting) pair interleaved in one process
(edgequant.tune.session_settings.tune_session) and writes session_tuning.json and SESSION_TUNING.md to
this ISA's results folder (results/, results/vnni/ or results/amx/).
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

from bench_data import samples
from bench_machine import isa_results_dir, isa_target, machine

from edgequant.tune.session_settings import CANDIDATES, tune_session

COMMON = ["default", "no_spinning", "no_arena", "extended", "denormal_as_zero", "dynamic_block_base_4"]
INT8_ONLY = ["qdq_int8_allowed", "x64quantprecision"]
MODELS = {  # label: (path, input kind, settings, rounds)
    "resnet18 fp32": (".models/resnet18.onnx", "image", COMMON, 25),
    "resnet18 int8": (".work/resnet18/edgequant.onnx", "image", COMMON + INT8_ONLY, 25),
    "resnet18 ort_default_static": (".work/resnet18/ort_default_static.onnx", "image", ["default", "qdq_int8_allowed"], 25),
    "mobilenet_v2 fp32": (".models/mobilenet_v2.onnx", "image", COMMON, 60),
    "mobilenet_v2 int8": (".work/mobilenet_v2/edgequant.onnx", "image", COMMON + INT8_ONLY, 60),
    "encoder fp32": (".work/encoder/fp32_fused.onnx", "tokens", COMMON + ["gelu_approximation"], 25),
    "encoder int8": (".work/encoder/edgequant.onnx", "tokens", COMMON + ["gelu_approximation"], 25),
}


def write_md(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = ["# Session settings sweep", "",
             f"`benchmarks/session_sweep.py` ({res['elapsed_s']:.0f} s). CPU: {m['cpu']} ({m['cores']} cores), "
             f"ISA {', '.join(m['isa'])} (target {isa_target(m)}); "
             f"device cpu; onnxruntime {m['onnxruntime']}.",
             "Every (threads, setting) pair of one model runs once per round in a fresh random order, one process;",
             "speedup = median of `default@1T` / median of the setting, 95% paired bootstrap interval.",
             "A setting 'wins' only if >= 1.02x with the interval above 1.", ""]
    for label, r in res["models"].items():
        lines += [f"## {label}", "", f"rounds {r['rounds']}, load average {', '.join(f'{x:.2f}' for x in r['loadavg'])}; "
                  f"winner: **{r['best']}**", "", "| setting | median ms | p90 ms | speedup vs default@1T | 95% CI |",
                  "|---|---|---|---|---|"]
        for t in r["timings"]:
            lines.append(f"| {t['name']} | {t['median_ms']:.2f} | {t['p90_ms']:.2f} | {t['speedup']:.3f}x | "
                         f"{t['ci95'][0]:.3f}-{t['ci95'][1]:.3f} |")
        if r.get("final"):
            lines += ["", "Thread counts head to head (same rounds): " + ", ".join(
                f"{k} {v['median_ms']:.2f} ms ({v['speedup']:.2f}x, {v['ci95_low']:.2f}-{v['ci95_high']:.2f})"
                for k, v in r["final"].items())]
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, e.g. 1,8,16 on a server")
    ap.add_argument("--out", default=None, help="default: this ISA's results folder, as run.py's")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = {"schema": "edgequant.session_sweep/1", "machine": machine(), "models": {}}
    out = Path(args.out) if args.out else isa_results_dir(HERE / "results", res["machine"])
    out.mkdir(parents=True, exist_ok=True)
    for label in args.models.split(","):
        rel, kind, names, rounds = MODELS[label]
        path = HERE / rel
        if not path.exists():
            print(f"skip {label}: {path} missing (run benchmarks/run.sh first)")
            continue
        feeds = samples(kind, 1, seed=1000)[0]
        r = tune_session(path, feeds, candidates={n: CANDIDATES[n] for n in names},
                         threads=tuple(int(t) for t in args.threads.split(",")),
                         rounds=max(5, rounds // (5 if args.quick else 1)))
        res["models"][label] = r.to_dict()
        print(f"{label}: best {r.best}; " + ", ".join(f"{t.name} {t.speedup.ratio:.2f}x" for t in r.timings), flush=True)
    res["elapsed_s"] = time.perf_counter() - t0
    (out / "session_tuning.json").write_text(json.dumps(res, indent=2))
    write_md(res, out / "SESSION_TUNING.md")
    print(f"wrote {out / 'SESSION_TUNING.md'} in {res['elapsed_s']:.0f}s; loadavg {os.getloadavg()}")


if __name__ == "__main__":
    main()
