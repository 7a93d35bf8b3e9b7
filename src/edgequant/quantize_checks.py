"""Checks around a quantization run: names the user asked for exist, known-bad choices are
warned about before anyone measures them, and a run that quantized nothing is noticed."""

from __future__ import annotations

from pathlib import Path

import onnx

from .errors import EdgequantError
from .quantize_config import SLOW_DYNAMIC_OPS, QuantizeConfig
from .targets import RULES


def check_names(model_path: Path, config: QuantizeConfig, prepared: Path | None = None) -> None:
    """Op types and node names the user asked for must exist in the model (or in its prepared
    graph, whose names tune's float fallbacks use): a typo would otherwise quantize nothing (or
    everything) and exit 0. The error lists the near matches."""
    import difflib

    from .qdq.subgraphs import all_nodes

    graphs = [onnx.load(str(p), load_external_data=False).graph for p in (model_path, prepared) if p is not None]
    ops = sorted({n.op_type for g in graphs for n in all_nodes(g)})
    names = sorted({n.name for g in graphs for n in all_nodes(g) if n.name})
    for op in config.op_types or ():
        if op not in ops and not onnx.defs.has(op):   # a real op type the model lacks is harmless
            near = difflib.get_close_matches(op, ops, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise EdgequantError(f"{model_path}: --op-types {op}: not an ONNX op type; {hint}"
                                 f"the model has {', '.join(ops[:20])}{' ...' if len(ops) > 20 else ''}")
    for node in config.exclude:
        if node not in names:
            near = difflib.get_close_matches(node, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else " (edgequant inspect lists the nodes)"
            raise EdgequantError(f"{model_path}: --exclude {node}: no node of that name{hint}")


def quantized_nothing(path: Path) -> bool:
    """No quantize/dequantize or integer op in the file at all (If/Loop/Scan bodies included)."""
    from .qdq.subgraphs import all_nodes

    quant_ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "QAttention", "QGemm", "DynamicQuantizeLSTM"}
    model = onnx.load(str(path), load_external_data=False)
    return not any(n.op_type in quant_ops for n in all_nodes(model.graph))


def config_warnings(config: QuantizeConfig) -> list[str]:
    """Known-bad choices worth telling the user before they measure it themselves."""
    out = []
    if config.mode == "dynamic":
        for op in config.op_types or ():
            if op in SLOW_DYNAMIC_OPS:
                out.append(f"dynamic {op}: {SLOW_DYNAMIC_OPS[op]}")
    rule = RULES[config.target]
    if (config.target == "x86-avx2" and not config.reduce_range and config.weight_type == "int8"
            and config.activation_type == "uint8"):
        out.append("U8S8 without reduce_range on x86 without VNNI can saturate (VPMADDUBSW); "
                   f"rule for {rule.name}: {rule.why}")
    return out
