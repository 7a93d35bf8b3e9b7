"""Peak memory of quantizing a model over 2 GiB (weights in external data), measured from outside
(issue 13's goal: dynamic and static quantize with peak RSS under 2x the weights' size, and the output
loads in onnxruntime).

    PYTHONPATH=src .venv/bin/python benchmarks/large_model.py [--dim 12000 --layers 4] [--write]

Builds (once, into .cache/large/) a chain of ``--layers`` MatMuls with ``--dim`` x ``--dim`` float32
weights in one external-data file (4 x 12000^2: 2.3 GB), then runs ``edgequant quantize --mode
dynamic`` and ``--mode static --calib random:8`` in child processes, sampling the resident memory of
each process tree every 0.1 s (benchmarks/tune_memory.py's probe), and loads each output in
onnxruntime (its own peak is measured too). ``--write`` appends to results/large_model.json and
rewrites results/LARGE_MODEL.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).parent))
from tune_memory import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "large"
RESULTS = Path(__file__).parent / "results"


def build(dim: int, layers: int) -> Path:
    """The chain model, written tensor by tensor so the builder never holds more than one weight."""
    path = CACHE / f"matmul{layers}x{dim}.onnx"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    data = path.with_suffix(".onnx.data")
    rng = np.random.default_rng(0)
    inits, nodes, prev, offset = [], [], "x", 0
    with open(data, "wb") as f:
        for i in range(layers):
            # scaled so activations stay O(1) through the chain; rows written in blocks
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[dim, dim])
            for start in range(0, dim, 1000):
                block = rng.standard_normal((min(1000, dim - start), dim), dtype=np.float32) / np.float32(np.sqrt(dim))
                f.write(block.tobytes())
            length = dim * dim * 4
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=key, value=value)
            t.data_location = TensorProto.EXTERNAL
            offset += length
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"], name=f"mm{i}"))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, dim])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


_LOAD = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], "
         "providers=['CPUExecutionProvider']); i = s.get_inputs()[0]; "
         "s.run(None, {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32)})")


def run(model: Path, mode: str, work: Path) -> dict:
    out = work / f"{mode}.onnx"
    cmd = [sys.executable, "-m", "edgequant", "quantize", str(model), "--mode", mode, "-o", str(out)]
    if mode == "static":
        cmd += ["--calib", "random:8"]
    row = {"mode": mode, **measure(cmd)}
    if row["rc"] == 0:
        loaded = measure([sys.executable, "-c", _LOAD, str(out)])
        row["output_loads"] = loaded["rc"] == 0
        row["load_peak_mb"] = loaded["peak_tree_mb"]
        row["output_mb"] = round(sum(p.stat().st_size for p in work.glob(f"{mode}.onnx*")) / 2**20)
    return row


def _markdown(rows: list[dict]) -> str:
    lines = ["# Quantizing a model over 2 GiB", "",
             "Command: `PYTHONPATH=src .venv/bin/python benchmarks/large_model.py --write` (a chain of four",
             "12000x12000 float32 MatMuls, weights in one external-data file: 2.3 GB; static calibrates on",
             "`random:8`). Peak = the quantize process tree's resident memory at one instant, sampled every 0.1 s.", "",
             "| when | code | machine | model | weights MB | mode | rc | wall s | peak MB | peak / weights | output MB | output loads |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['peak_tree_mb'] / r['weights_mb']:.2f}x" if r.get("weights_mb") else "-"
        lines.append(f"| {r['when']} | {r.get('commit', '')} | {r['machine']} | {r['model']} | {r['weights_mb']} | "
                     f"{r['mode']} | {r['rc']} | {r['wall_s']} | {r['peak_tree_mb']} | {ratio} | "
                     f"{r.get('output_mb', '-')} | {r.get('output_loads', '-')} |")
    lines += ["", "Goal (issue 13): peak under 2x the weights for dynamic and static, and the output loads in",
              "onnxruntime. Rows at 305792d: onnxruntime's quantize_dynamic / quantize_static (the weights, a",
              "shape-inferred copy and the quantized model at once). Later rows: edgequant's streaming quantizer",
              "(src/edgequant/qdq/streaming.py: weights read in row blocks and written quantized to the output's",
              "data file); static's peak is its calibration session, which holds the FP32 weights once.",
              "Wall time depends on the machine's load (2 shared cores); memory does not."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=12000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["dynamic", "static"])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    model = build(args.dim, args.layers)
    weights_mb = round(args.layers * args.dim * args.dim * 4 / 2**20)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    from edgequant.targets import resolve_target

    target = resolve_target("auto").name       # the ISA the numbers belong to (x86-avx2 / x86-vnni)
    rows = []
    with tempfile.TemporaryDirectory(prefix="eq-large-", dir=CACHE) as tmp:
        for mode in args.modes:
            row = {"when": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
                   "machine": f"{platform.machine()} {target}, cpu device, load {Path('/proc/loadavg').read_text().split()[0]}",
                   "model": model.name, "weights_mb": weights_mb, **run(model, mode, Path(tmp))}
            print(json.dumps(row))
            rows.append(row)
    if args.write:
        log = RESULTS / "large_model.json"
        old = json.loads(log.read_text()) if log.exists() else []
        log.write_text(json.dumps(old + rows, indent=1) + "\n")
        (RESULTS / "LARGE_MODEL.md").write_text(_markdown(old + rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
