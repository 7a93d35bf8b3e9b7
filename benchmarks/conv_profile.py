"""Where a CNN's time goes, FP32 against its INT8 variants, convolution class by class.

    .venv/bin/python benchmarks/conv_profile.py FP32.onnx INT8.onnx [MORE.onnx ...] [--rounds 3]
    .venv/bin/python benchmarks/conv_profile.py benchmarks/.models/mobilenet_v2.onnx --quantize

``--quantize`` first builds what ``edgequant quantize --mode static`` writes on this machine, with
per-channel (its default) and per-tensor weights, calibrated on 64 image-like samples
(``bench_data.image``, seed 1), into benchmarks/.work/conv_profile/, and profiles those too.

the CPU device's per-node profile (onnxruntime's profiler, 1 thread); every node's kernel time is put
in a class read from its weight shape: ``stem`` (fewer than 8 input channels), ``depthwise`` (one
group per channel), ``pointwise`` (1x1), ``conv kxk`` (the rest), or its op type. FP32 runs as
NCHWc FusedConv and INT8 as NHWC QLinearConv, so op types alone cannot be compared; the classes
can. Models are profiled in turns (A B C, A B C, ...) and each class's median over the rounds is
reported, so a burst of load on a shared machine hits one round, not one model.
Input: one image-like sample (``bench_data.image``) for 4-D inputs, else standard normal.
Writes ``conv_profile_<FP32 stem>.md`` in the ISA's results folder (results/, vnni/, amx/).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import image  # noqa: E402
from bench_report import isa_results_dir, machine  # noqa: E402

WARMUP, RUNS = 20, 150


def _cpu():
    from edgequant.devices import local_cpu
    from edgequant.measure.session import SessionConfig

    return local_cpu(SessionConfig(intra_op_threads=1))


def node_classes(path: str) -> dict[str, str]:
    """Node name in onnxruntime's optimized graph -> its conv class (from the weight's shape) or,
    for any other node, its op type."""
    graph = _cpu().optimized_graph(path).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    out = {}
    for node in graph.node:
        if "Conv" not in node.op_type:
            out[node.name] = node.op_type
            continue
        w = dims.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if not w or len(w) < 4:
            out[node.name] = "conv (unknown weight)"
        elif group > 1 and group == w[0]:
            out[node.name] = "depthwise"
        elif w[1] < 8:
            out[node.name] = "stem"
        elif w[2] == w[3] == 1:
            out[node.name] = "pointwise"
        else:
            out[node.name] = "conv kxk"
    return out


def feeds_for(path: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    graph = onnx.load(path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    out = {}
    for i in (i for i in graph.input if i.name not in weights):
        shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3]:
            out[i.name] = image(rng, shape[2])
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def profile_once(path: str, feeds: dict, classes: dict[str, str]) -> dict[str, float]:
    """ms per run by class: the CPU device's per-node profile (medians after the warm-up runs)."""
    by_class: dict[str, float] = defaultdict(float)
    for node, us in _cpu().profile_nodes(path, feeds, warmup=WARMUP, runs=RUNS).items():
        by_class[classes.get(node, node)] += us / 1000
    return dict(by_class)


def quantized_variants(fp32: str) -> list[str]:
    """edgequant's static INT8 of ``fp32``, per-channel and per-tensor (see the module docstring)."""
    from edgequant import api

    work = HERE / ".work" / "conv_profile"
    work.mkdir(parents=True, exist_ok=True)
    feeds = feeds_for(fp32)
    name, shape = next(iter(feeds)), next(iter(feeds.values())).shape
    rng = np.random.default_rng(1)
    calib = work / "calib.npz"
    np.savez(calib, **{name: np.concatenate([image(rng, shape[2]) for _ in range(64)])})
    out = []
    for suffix, per_channel in (("static", True), ("static-per-tensor", False)):
        path = work / f"{Path(fp32).stem}.{suffix}.onnx"
        api.quantize(fp32, path, mode="static", calib=str(calib), per_channel=per_channel, force=True)
        out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="FP32 model first, then its INT8 variants")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quantize", action="store_true", help="also build and profile edgequant's static INT8")
    ap.add_argument("--out", default=None, help="markdown file (default: the ISA's results folder)")
    args = ap.parse_args()
    command = " ".join(sys.argv[1:])
    if args.quantize:
        args.models += quantized_variants(args.models[0])
    feeds = feeds_for(args.models[0])
    classes = {m: node_classes(m) for m in args.models}
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for _ in range(args.rounds):
        for m in args.models:
            runs[m].append(profile_once(m, feeds, classes[m]))
    median = {m: {c: float(np.median([r.get(c, 0.0) for r in rs])) for c in {c for r in rs for c in r}}
              for m, rs in runs.items()}
    rows = sorted({c for d in median.values() for c in d}, key=lambda c: -max(d.get(c, 0) for d in median.values()))
    mach = machine()
    names = [Path(m).name for m in args.models]
    lines = [f"# Kernel time by convolution class: {names[0]}", "",
             f"Machine: {mach['cpu']} ({' '.join(mach['isa'])}), device cpu, onnxruntime {mach['onnxruntime']}, 1 thread. "
             f"Command: `.venv/bin/python benchmarks/conv_profile.py {command}`. "
             f"ms per run, median of {args.rounds} profiled rounds of {RUNS} runs each, models in turns. "
             f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             "| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in rows:
        vals = [median[m].get(c) for m in args.models]
        lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(median[m].values()):.3f}**" for m in args.models) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else isa_results_dir(HERE / "results", mach) / f"conv_profile_{Path(args.models[0]).stem}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
