"""onnxruntime's CPU SkipLayerNormalization vs the Add + LayerNormalization it replaces.

    .venv/bin/python benchmarks/skip_layernorm.py [--threads 1,2] [--rounds 300]

Six residual blocks on a [1, 128, 384] tensor (a MiniLM layer's shape), three ways, interleaved
in one process: ``Add -> LayerNormalization`` (onnxruntime's session optimizer fuses it into
SkipLayerNormalization), the same with that fusion disabled, and ``Sum -> LayerNormalization``
(what ``edgequant.qdq.encoder_graph.unfuse_skip_layernorm`` writes; the optimizer does not fuse
Sum). Prints median microseconds per run; the numbers are in ``FINDINGS.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HIDDEN, SEQ, BLOCKS = 384, 128, 6


def model(op: str) -> bytes:
    dims = ["batch", "sequence", HIDDEN]
    inits = [numpy_helper.from_array(np.ones(HIDDEN, np.float32), "g"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "b")]
    nodes, cur = [], "x"
    for i in range(BLOCKS):
        nodes += [helper.make_node(op, [cur, "skip"], [f"s{i}"]),
                  helper.make_node("LayerNormalization", [f"s{i}", "g", "b"], [f"y{i}"], axis=-1, epsilon=1e-12)]
        cur = f"y{i}"
    graph = helper.make_graph(nodes, "residuals", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
                                                   helper.make_tensor_value_info("skip", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(1, SEQ, HIDDEN)).astype(np.float32),
             "skip": rng.normal(size=(1, SEQ, HIDDEN)).astype(np.float32)}
    print(f"onnxruntime {ort.__version__}; load average {os.getloadavg()}")
    for threads in (int(t) for t in args.threads.split(",")):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        cpu = ["CPUExecutionProvider"]
        sessions = {"Add+LayerNorm (fused to SkipLayerNormalization)": ort.InferenceSession(model("Add"), so, providers=cpu),
                    "Add+LayerNorm (fusion disabled)": ort.InferenceSession(
                        model("Add"), so, providers=cpu, disabled_optimizers=["SkipLayerNormFusion"]),
                    "Sum+LayerNorm": ort.InferenceSession(model("Sum"), so, providers=cpu)}
        ref = None
        for s in sessions.values():
            out = s.run(None, feeds)[0]
            ref = out if ref is None else ref
            assert np.allclose(out, ref, atol=1e-4)      # the same function three ways
            for _ in range(20):
                s.run(None, feeds)
        times = {k: [] for k in sessions}
        names = list(sessions)
        for r in range(args.rounds):
            for i in np.random.default_rng(r).permutation(len(names)):
                t0 = time.perf_counter()
                sessions[names[i]].run(None, feeds)
                times[names[i]].append(time.perf_counter() - t0)
        for k, v in times.items():
            print(f"{threads} thread(s)  {k:50s} {np.median(v) * 1e6:8.1f} us per run ({BLOCKS} blocks)")


if __name__ == "__main__":
    main()
