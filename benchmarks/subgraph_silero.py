"""silero_vad, whose every Conv and LSTM sits in an ``If`` on the sample rate: FP32 vs
onnxruntime's default ``quantize_dynamic`` (as ZOO.md's ORT column builds it), ORT's dynamic with
``EnableSubgraph`` (its documented switch for bodies), and edgequant's dynamic and static (which
quantize the bodies), timed interleaved in one process; binary accuracy on the zoo's eval set.

    PYTHONPATH=src:. .venv/bin/python benchmarks/subgraph_silero.py [--runs 300] [-o /tmp/subgraph_bench]

Prints a markdown table (recorded in FINDINGS.md with the load average before and after).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.zoo.ort_default import _first_line, _quiet_in, ort_dynamic
from edgequant import api
from edgequant.measure.coverage import coverage_of_graph

ZOO = Path(".cache/zoo/silero_vad")


def ort_dynamic_subgraph(model: Path, out: Path) -> str | None:
    """``quantize_dynamic`` defaults plus ``EnableSubgraph``; an error line or None."""
    from onnxruntime.quantization import quantize_dynamic

    try:
        with _quiet_in(out.parent):
            quantize_dynamic(str(model), str(out), extra_options={"EnableSubgraph": True})
    except Exception as exc:  # noqa: BLE001 - the flow's failure is the result
        return _first_line(exc)
    return None


def accuracy(model: Path) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    with np.load(ZOO / "eval.npz") as z:
        probs = [sess.run(None, {"input": x, "state": s, "sr": np.array(sr)})[0].item()
                 for x, s, sr in zip(z["input"], z["state"], z["sr"])]
        return float(np.mean((np.array(probs) > 0.5) == z["labels"].astype(bool)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="subgraph-silero-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fp32 = (ZOO / "model.onnx").resolve()   # ORT's flows run in the output folder
    variants: dict[str, Path] = {"fp32": fp32}
    failed: dict[str, str] = {}
    for name, build in (("ort-dynamic (default)", ort_dynamic), ("ort-dynamic EnableSubgraph", ort_dynamic_subgraph)):
        path = out / (name.split()[0] + ("-sub" if "Enable" in name else "") + ".onnx")
        path.unlink(missing_ok=True)
        err = build(fp32, path)
        if err:
            failed[name] = err
        else:
            variants[name] = path
    for mode in ("dynamic", "static"):
        path = out / f"edgequant-{mode}.onnx"
        path.unlink(missing_ok=True)
        api.quantize(fp32, path, mode=mode, calib=str(ZOO / "calib.npz"))
        variants[f"edgequant {mode}"] = path
    bench = api.bench(list(variants.values()), input=str(ZOO / "eval.npz"), threads=1, warmup=20, runs=args.runs)
    timings = bench.sweep[0].models
    from edgequant.devices import local_cpu

    print("| variant | p50 ms | speedup [95% CI] | INT8 compute ops | binary accuracy |")
    print("|---|---|---|---|---|")
    for (name, path), t in zip(variants.items(), timings):
        cov = coverage_of_graph(local_cpu().optimized_graph(path, "extended"))
        sp = t.speedup
        print(f"| {name} | {t.latency.p50:.3f} | {sp.ratio:.2f}x [{sp.ci_low:.2f}, {sp.ci_high:.2f}] | "
              f"{cov.quantized_compute_ops}/{cov.compute_ops} | {accuracy(path):.3f} |")
    for name, err in failed.items():
        print(f"| {name} | fails: {err} | | | |")


if __name__ == "__main__":
    main()
