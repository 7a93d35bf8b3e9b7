"""onnxruntime's 8-bit MatMulNBits against DynamicQuantizeMatMul on the suite's fused encoder.

    .venv/bin/python benchmarks/matmul_nbits.py [--rounds 60] [--threads 1]

Needs the suite's encoder variants (``bash benchmarks/run.sh --models encoder`` writes
``benchmarks/.work/encoder/fp32_fused.onnx`` and ``edgequant.onnx``). Each weight MatMul of the
fused FP32 encoder becomes ``com.microsoft.MatMulNBits`` with 8-bit symmetric round-to-nearest
weights per block along K (block 32 and 128), with ``accuracy_level`` 4 (activations quantized
to int8 per block, integer dot products) and 0 (weights dequantized, float compute). Attention,
SkipLayerNormalization and BiasGelu stay as they are. Timed interleaved in one process with the
FP32 graph and edgequant's dynamic INT8 (QAttention + DynamicQuantizeMatMul); cosine vs FP32 of
the mean-pooled sentence embeddings of the suite's token samples, as the suite measures it. The question it answers (issue 14): does the runtime's block-wise
8-bit kernel beat per-tensor dynamic quantization on this ISA? Numbers go to FINDINGS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work" / "encoder"


def to_matmul_nbits(model: onnx.ModelProto, block: int, accuracy_level: int) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose 2-D constant-weight MatMuls (K divisible by ``block``) are 8-bit MatMulNBits."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, replaced, used = [], 0, set()
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        w = numpy_helper.to_array(weight).astype(np.float32) if weight is not None else None
        if w is None or w.ndim != 2 or w.shape[0] % block:
            nodes.append(node)
            continue
        k, n = w.shape
        blocks = w.T.reshape(n, k // block, block)                 # MatMulNBits keeps B as [N, K/block, block]
        absmax = np.abs(blocks).max(axis=2)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.round(blocks / scale[..., None]), -127, 127).astype(np.int32) + 128   # zero point 128
        b = numpy_helper.from_array(codes.astype(np.uint8), f"{weight.name}.nbits")
        s = numpy_helper.from_array(scale.reshape(-1), f"{weight.name}.nbits_scale")
        graph.initializer.extend([b, s])
        attrs = {"K": k, "N": n, "bits": 8, "block_size": block}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], b.name, s.name], list(node.output),
                                      name=f"{node.name}.nbits", domain="com.microsoft", **attrs))
        used.add(weight.name)
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name not in used or i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return out, replaced


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    fp32, dyn = WORK / "fp32_fused.onnx", WORK / "edgequant.onnx"
    if not (fp32.is_file() and dyn.is_file()):
        print(f"{fp32} or {dyn} missing: run `bash benchmarks/run.sh --models encoder` first", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import bench_data
    from edgequant.devices import local_cpu
    from edgequant.measure.machine import describe_machine, machine_facts
    from edgequant.measure.session import SessionConfig

    session = SessionConfig(intra_op_threads=args.threads)
    device = local_cpu(session)
    with tempfile.TemporaryDirectory(prefix="edgequant-nbits-") as tmp:
        variants = {"fp32 (fused)": fp32, "edgequant dynamic (what 'edgequant quantize' keeps here)": dyn}
        base = onnx.load(str(fp32))
        for block in (32, 128):
            for level in (4, 0):
                model, replaced = to_matmul_nbits(base, block, level)
                path = Path(tmp) / f"nbits_b{block}_a{level}.onnx"
                onnx.save(model, str(path))
                variants[f"MatMulNBits 8-bit, block {block}, accuracy_level {level} ({replaced} MatMuls)"] = path
        samples = bench_data.samples("tokens", 8, seed=7)
        feeds = samples[0]
        paths = [str(p) for p in variants.values()]
        bench = device.time_interleaved(paths, feeds, warmup=5, runs=args.rounds)
        import onnxruntime as ort

        def embeddings(path: str) -> np.ndarray:
            """Mean-pooled sentence embeddings over the samples (the suite's encoder fidelity)."""
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            pooled = []
            for feed in samples:
                hidden, mask = sess.run(None, feed)[0][0], feed["attention_mask"][0].astype(np.float32)[:, None]
                pooled.append((hidden * mask).sum(0) / mask.sum())
            return np.concatenate(pooled).astype(np.float64)

        ref = embeddings(paths[0])
        print(f"{describe_machine(machine_facts(session))}; {bench.runs} interleaved rounds; "
              f"load average {os.getloadavg()}")
        print("| variant | median ms | speedup vs FP32 [95% CI] | cosine vs FP32 |")
        print("|---|---|---|---|")
        for (label, path), timing in zip(variants.items(), bench.models):
            got = embeddings(str(path))
            cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))
            sp = timing.speedup
            print(f"| {label} | {timing.stats.p50:.2f} | {sp.ratio:.2f}x [{sp.ci_low:.2f}-{sp.ci_high:.2f}] | {cos:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
