"""INT8 latency depends on what the core did just before: back to back, after idle, after other work.

    .venv/bin/python benchmarks/duty_cycle.py [--rounds 3] [--runs 100] [--gap-ms 25]

For each model pair (FP32 and the INT8 file ``edgequant quantize --mode static`` writes on this
machine, from benchmarks/.work/conv_profile/, built by ``conv_profile.py MODEL --quantize``), one
session each (edgequant's CPU timing session: 1 intra-op thread), and before every timed run:

* ``back-to-back``: nothing (the model's previous run);
* ``after idle``: ``time.sleep(gap)`` (a camera pipeline waiting for its next frame);
* ``after scalar work``: a busy loop of ``gap`` in Python (the core busy, no vector units);
* ``after cache flush``: a 64 MB sum (the caches hold other data, the vector units stay on);
* ``after the other model``: one run of the pair's other model (what an interleaved A/B measures:
  INT8 after FP32, FP32 after INT8).

Regimes and models rotate every round, so drift hits all of them; each cell is the median over
rounds of the per-round median. Writes ``DUTY_CYCLE.md`` and ``duty_cycle.json`` in the ISA's results
folder. This is why an interleaved A/B (each run after another model's) can differ from a run of
one model alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import image  # noqa: E402
from bench_machine import isa_results_dir, machine  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2")
FLUSH = np.ones(64 * 2**20 // 4, np.float32)


def _regimes(gap_s: float) -> dict:
    def busy() -> None:
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            pass
    return {"back-to-back": lambda: None, "after idle": lambda: time.sleep(gap_s),
            "after scalar work": busy, "after cache flush": lambda: float(FLUSH.sum()),
            "after the other model": None}     # filled per pair and kind


def _session(path: Path) -> ort.InferenceSession:
    """The session edgequant's CPU device times with (1 intra-op thread, its other defaults)."""
    from edgequant.devices.cpu_session import open_session
    from edgequant.measure.session import SessionConfig

    return open_session(path, SessionConfig(intra_op_threads=1))


def _median_ms(sess: ort.InferenceSession, feeds: dict, before, runs: int) -> float:
    for _ in range(10):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        before()
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--gap-ms", type=float, default=25.0)
    args = ap.parse_args()
    pairs = {}
    for name in MODELS:
        fp32, int8 = HERE / ".models" / f"{name}.onnx", HERE / ".work" / "conv_profile" / f"{name}.static.onnx"
        if not (fp32.is_file() and int8.is_file()):
            print(f"{name}: skipped ({fp32} or {int8} missing: run benchmarks/conv_profile.py {fp32} --quantize)")
            continue
        pairs[name] = {"fp32": _session(fp32), "int8": _session(int8)}
    if not pairs:
        return 1
    regimes = _regimes(args.gap_ms / 1e3)
    feeds = {name: {s["fp32"].get_inputs()[0].name: image(np.random.default_rng(0), 224)} for name, s in pairs.items()}
    cells: dict = {}
    for r in range(args.rounds):
        order = list(regimes)[r % len(regimes):] + list(regimes)[: r % len(regimes)]
        for name, sessions in pairs.items():
            for regime in order:
                for kind in (("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")):
                    other = sessions["int8" if kind == "fp32" else "fp32"]
                    before = regimes[regime] or (lambda o=other, f=feeds[name]: o.run(None, f))
                    ms = _median_ms(sessions[kind], feeds[name], before, args.runs)
                    cells.setdefault((name, regime, kind), []).append(ms)
                    print(f"round {r} {name} {regime} {kind}: {ms:.2f} ms", flush=True)
    rows = [{"model": name, "regime": regime,
             "fp32_ms": statistics.median(cells[(name, regime, "fp32")]),
             "int8_ms": statistics.median(cells[(name, regime, "int8")]),
             "int8_range_ms": [min(cells[(name, regime, "int8")]), max(cells[(name, regime, "int8")])]}
            for name in pairs for regime in regimes]
    for row in rows:
        row["speedup"] = row["fp32_ms"] / row["int8_ms"]
    mach = machine()
    doc = {"machine": mach, "rounds": args.rounds, "runs": args.runs, "gap_ms": args.gap_ms, "rows": rows}
    out = isa_results_dir(HERE / "results", mach)
    out.mkdir(parents=True, exist_ok=True)
    (out / "duty_cycle.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# INT8 latency by what ran before it", "",
             f"`.venv/bin/python benchmarks/duty_cycle.py --rounds {args.rounds} --runs {args.runs} --gap-ms {args.gap_ms:g}`. "
             f"Machine: {mach['cpu']} ({mach['cores']} cores), ISA {', '.join(mach['isa'])}; onnxruntime "
             f"{mach['onnxruntime']}; device cpu, 1 thread. INT8: `edgequant quantize --mode static` on this machine "
             "(benchmarks/.work/conv_profile). Median over rounds of each round's median; INT8 range over rounds.", "",
             "| model | before each run | FP32 ms | INT8 ms [range] | speedup |", "|---|---|---|---|---|"]
    for row in rows:
        lo, hi = row["int8_range_ms"]
        lines.append(f"| {row['model']} | {row['regime']} | {row['fp32_ms']:.2f} | {row['int8_ms']:.2f} "
                     f"[{lo:.2f}-{hi:.2f}] | {row['speedup']:.2f}x |")
    (out / "DUTY_CYCLE.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'DUTY_CYCLE.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
