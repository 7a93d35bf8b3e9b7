"""FP32 vs edgequant INT8 at 1..N intra-op threads, timed four ways, to separate what threads give
a deployed model from what the interleaved A/B does to multi-threaded sessions.

    .venv/bin/python benchmarks/thread_scaling.py [--models resnet18,mobilenet_v2] [--threads 1,2,4,8]

Regimes (every one interleaves FP32 and INT8 in rounds, random order, one process, so drift is paired):

* ``spinning``: one run per model per round, onnxruntime's default workers, which spin on after a run
  returns: the idle session's workers take the cores from the one being timed. What the suite, ``run``
  and ``tune`` measured before ``CpuDevice.time_interleaved`` stopped them.
* ``stop-spin``: the same with ``session.force_spinning_stop=1`` (workers spin inside a run, sleep
  after it): what ``time_interleaved`` now does whenever models take turns.
* ``no-spin``: ``session.intra_op.allow_spinning=0``: workers never spin, each parallel section pays
  their wake-up.
* ``burst``: each model 8 times in a row per round (the first untimed), as ``stop-spin`` otherwise:
  one model back to back, as a stream of frames runs it.

Writes THREAD_SCALING.md and thread_scaling.json to --out (default: this ISA's results folder).
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

from bench_data import samples  # noqa: E402
from bench_machine import isa_results_dir, isa_target, machine  # noqa: E402
from bench_timing import session_config  # noqa: E402
from bench_variants import edgequant_quantize  # noqa: E402

from edgequant.devices import local_cpu  # noqa: E402
from edgequant.measure.session import STOP_SPINNING_BETWEEN_RUNS  # noqa: E402

REGIMES = {"spinning": ({"config_entries": {STOP_SPINNING_BETWEEN_RUNS: "0"}}, 1),
           "stop-spin": ({}, 1), "no-spin": ({"allow_spinning": False}, 1), "burst": ({}, 8)}


def measure(paths: list[str], feeds: dict, threads: int, rounds: int) -> dict:
    out = {}
    for regime, (changes, burst) in REGIMES.items():
        cfg = session_config(threads).with_(**changes)
        res = local_cpu(cfg).time_interleaved(paths, feeds, warmup=5, runs=rounds if burst == 1 else rounds // 2,
                                              burst=burst)
        fp32, int8 = res.models
        out[regime] = {"fp32_ms": fp32.stats.p50, "int8_ms": int8.stats.p50,
                       "speedup": int8.speedup.ratio, "ci95": [int8.speedup.ci_low, int8.speedup.ci_high]}
        print(f"  {threads}T {regime}: FP32 {fp32.stats.p50:.2f} ms, INT8 {int8.stats.p50:.2f} ms, "
              f"{int8.speedup.ratio:.2f}x", flush=True)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Thread scaling: FP32 vs edgequant INT8, four timing regimes", "",
             f"Command: `.venv/bin/python benchmarks/thread_scaling.py --models {','.join(results['models'])} "
             f"--threads {','.join(map(str, results['threads']))}` ({results['elapsed_s']:.0f} s). "
             "Medians over interleaved rounds (random order, one process); speedup = FP32 median / INT8 median "
             "with a 95% paired bootstrap interval. `spinning`: one run per model per round, onnxruntime's workers "
             "spinning on after a run (what was timed before 2026-12-04); `stop-spin`: the same with "
             "`session.force_spinning_stop=1` (what `CpuDevice.time_interleaved` does now); `no-spin`: "
             "`session.intra_op.allow_spinning=0`; `burst`: 8 runs of one model in a row per round, first "
             "untimed, workers stopped after each run.",
             "", f"Machine: {m['cpu']} ({m['cores']} cores), ISA: {', '.join(m['isa'])} (target "
             f"{isa_target(m)}); device cpu; onnxruntime "
             f"{m['onnxruntime']}, python {m['python']}. Load average at start: "
             f"{', '.join(f'{x:.2f}' for x in results['loadavg_start'])}.", ""]
    for name, per_threads in results["models"].items():
        lines += [f"## {name}", "", "| threads | " + " | ".join(
            f"{r} FP32 ms | {r} INT8 ms | {r} speedup" for r in REGIMES) + " |", "|---" * (1 + 3 * len(REGIMES)) + "|"]
        for t, regimes in per_threads.items():
            cells = [f"{regimes[r]['fp32_ms']:.2f} | {regimes[r]['int8_ms']:.2f} | {regimes[r]['speedup']:.2f}x "
                     f"[{regimes[r]['ci95'][0]:.2f}-{regimes[r]['ci95'][1]:.2f}]" for r in REGIMES]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.time()
    mach = machine()
    out = Path(args.out) if args.out else isa_results_dir(HERE / "results", mach)
    out.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    results = {"machine": mach, "models": {}, "threads": threads, "loadavg_start": os.getloadavg()}
    calib, feeds = samples("image", 32, seed=1), samples("image", 1, seed=1000)[0]
    work = HERE / ".work" / "thread_scaling"
    work.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        src = HERE / ".models" / f"{name}.onnx"
        int8 = work / f"{name}.int8.onnx"
        edgequant_quantize("static")(src, int8, calib)
        print(f"[{name}] quantized", flush=True)
        results["models"][name] = {str(t): measure([str(src), str(int8)], feeds, t, args.rounds) for t in threads}
    results["elapsed_s"] = time.time() - t0
    (out / "thread_scaling.json").write_text(json.dumps(results, indent=1))
    (out / "THREAD_SCALING.md").write_text(markdown(results))
    print(f"wrote {out / 'THREAD_SCALING.md'}")


if __name__ == "__main__":
    main()
