"""Reproduce the node counts in FINDINGS.md: where ORT's default QDQ flow leaves float ops.

    .venv/bin/python benchmarks/investigate.py [resnet18 mobilenet_v2]

For each model: quantize with ORT's documented flow and three variations, let ORT optimize
each (SessionOptions.optimized_model_filepath at BASIC / EXTENDED / ALL) and count op types,
plus the Q nodes that feed more than one DQ (what blocks ORT's S8->U8 rewrite).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

from bench_data import ListReader, samples  # noqa: E402
from edgequant.devices import local_cpu  # noqa: E402
from edgequant.measure.coverage import coverage_of_graph  # noqa: E402

optimized_graph = local_cpu().optimized_graph

VARIANTS = {
    "ORT default (S8S8 per-tensor)": {},
    "S8S8 + DedicatedQDQPair": {"extra_options": {"DedicatedQDQPair": True}},
    "U8S8 (activation_type=QUInt8)": {"activation_type": QuantType.QUInt8},
    "U8S8 per-channel + reduce_range": {"activation_type": QuantType.QUInt8, "per_channel": True,
                                        "reduce_range": True},
}
SHOW = ["QLinearConv", "Conv", "QLinearAdd", "Add", "QGemm", "Transpose", "DequantizeLinear", "QuantizeLinear"]


def fanout_q(model) -> int:
    """Q nodes whose output feeds more than one node."""
    uses = Counter(i for n in model.graph.node for i in n.input)
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and uses[n.output[0]] > 1)


def main(models: list[str]) -> None:
    calib = samples("image", 16, seed=1)
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(HERE / ".models" / f"{name}.onnx"), str(pre))
            print(f"\n## {name}\n\n| variant | int8/compute | " + " | ".join(SHOW) +
                  " | Q fan-out (BASIC) |\n|---|---|" + "---|" * (len(SHOW) + 1))
            for label, kw in VARIANTS.items():
                out = Path(tmp) / "q.onnx"
                quantize_static(str(pre), str(out), ListReader(calib), quant_format=QuantFormat.QDQ, **kw)
                cov = coverage_of_graph(optimized_graph(out, "all"))
                basic = optimized_graph(out, "basic")
                cells = " | ".join(str(cov.op_counts.get(k, 0)) for k in SHOW)
                print(f"| {label} | {cov.quantized_compute_ops}/{cov.compute_ops} | {cells} | {fanout_q(basic)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet18", "mobilenet_v2"])
