"""Static INT8 inside If branches: each branch calibrated on the calls that take it.

onnxruntime 1.32's QDQ quantizer never enters a body (``EnableSubgraph`` is honoured by the
QOperator/dynamic quantizer only), and its calibrator observes graph outputs, which a body's
tensors are not. So, for every top-level ``If`` whose branches hold compute:

1. the FP32 model runs the calibration samples once with the If's condition and every outer
   value its branches read exposed as outputs: which branch each sample takes, and its inputs;
2. each branch is cut out as a model of its own (those values are its inputs) and quantized by
   the caller's own static recipe on the samples that took it; Ifs nested in it are handled the
   same way, one level down;
3. the quantized branch is grafted back in place of the FP32 one.

What stays float, and why, is returned: a branch no calibration sample takes (no data, no
ranges: silero_vad's 8 kHz branch on 16 kHz audio), and Loop/Scan bodies, whose tensors change
every iteration while only the loop's inputs and final outputs can be observed from outside.
The captured branch inputs are held in memory, up to :data:`CAPTURE_LIMIT_BYTES` in all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgequant.data import DataSource, Sample
from edgequant.measure.coverage import BODY_FLOAT_NOTE
from edgequant.model import TensorSpec

from .subgraphs import WEIGHT_SLOTS, all_nodes, graft_body, has_compute, node_bodies, outer_reads, standalone_body

#: ``quantize_body(fp32_path, out_path, calibration, notes)``: the caller's static recipe.
QuantizeBody = Callable[[Path, Path, DataSource, list[str]], None]

LOOP_REASON = ("inside a Loop/Scan body: its tensors change every iteration and cannot be calibrated "
               "from outside the loop (onnxruntime's QDQ quantizer does not enter bodies)")
_CAPTURE = "__edgequant_capture"
#: Captured branch inputs are held in memory: past this many bytes, later samples are not kept.
CAPTURE_LIMIT_BYTES = 1 << 30


@dataclass
class BodyReport:
    """What happened to each body that holds compute (``If_0/then_branch`` style names)."""

    quantized: dict[str, int] = field(default_factory=dict)      # body -> calibration samples it took
    float_bodies: dict[str, str] = field(default_factory=dict)   # body -> why it stays float
    notes: list[str] = field(default_factory=list)               # the body recipes' own notes

    def describe(self) -> list[str]:
        out = [f"{b}: quantized in static mode on the {n} calibration sample(s) that take it"
               for b, n in self.quantized.items()]
        out += [f"{BODY_FLOAT_NOTE}{b} stays float: {why}" for b, why in self.float_bodies.items()]
        return out + self.notes


class CapturedSource(DataSource):
    """The values a branch read on the calibration samples that took it (held in memory)."""

    def __init__(self, spec: str, rows: list[dict[str, np.ndarray]], inputs: Sequence[TensorSpec]) -> None:
        super().__init__(spec, inputs, len(rows))
        self._rows = rows

    def _samples(self) -> Iterator[Sample]:
        for k, row in enumerate(self._rows):
            yield Sample(dict(row), None, f"{self.spec}[{k}]")


def quantize_if_bodies(fp32: Path, quantized: Path, out: Path, calibration, quantize_body: QuantizeBody, *,
                       device, work: Path, prefix: str = "") -> tuple[Path, BodyReport]:
    """Graft statically quantized If branches of ``fp32`` into ``quantized`` (its top-level
    quantization) and write ``out``; returns the path of the result (``quantized`` itself when
    no branch was quantized) and the report."""
    report = BodyReport()
    fmodel = onnx.load(str(fp32))
    for node in fmodel.graph.node:
        for attr, body in node_bodies(node) if node.op_type != "If" else ():
            if has_compute(body):
                report.float_bodies[f"{prefix}{node.name or node.op_type}/{attr}"] = LOOP_REASON
    ifs = ifs_with_compute(fmodel.graph)
    if not ifs:
        return quantized, report
    rows = capture_branch_inputs(fmodel, ifs, calibration, device, work / f"{_tag(prefix) or 'top'}_capture.onnx")
    qmodel = onnx.load(str(quantized))
    grafted = False
    for k, node in enumerate(ifs):
        qnode = matching_if(qmodel.graph, node)
        for attr, body in node_bodies(node):
            if not has_compute(body):
                continue
            name = branch_label(prefix, node, attr)
            taken = rows[(k, attr)]
            if qnode is None:
                report.float_bodies[name] = "the top-level quantizer replaced its If node"
                continue
            if not taken:
                report.float_bodies[name] = "no calibration sample takes this branch (no data to calibrate it on)"
                continue
            tag = graft_tag(prefix, node, k, attr)
            try:
                done = _quantize_branch(fmodel, body, taken, quantize_body, device, work, tag, name + "/", report)
                if not device.coverage(done).quantized_compute_ops:   # Q/DQ pairs around float ops: cost only
                    ops = sorted({n.op_type for n in all_nodes(body) if n.op_type in WEIGHT_SLOTS})
                    report.float_bodies[name] = (f"none of its compute ({', '.join(ops)}) runs as an INT8 kernel "
                                                 "once quantized, so it is kept in FP32")
                    continue
                graft_body(qmodel, qnode, attr, body, onnx.load(str(done)), tag)
            except Exception as exc:  # noqa: BLE001 - one branch failing leaves it float, not the model
                report.float_bodies[name] = f"quantizing it failed: {' '.join(str(exc).split())[:300]}"
                continue
            report.quantized[name] = len(taken)
            grafted = True
    if not grafted:
        return quantized, report
    onnx.save(qmodel, str(out))
    return out, report


def _quantize_branch(fmodel: onnx.ModelProto, body: onnx.GraphProto, taken: list[dict[str, np.ndarray]],
                     quantize_body: QuantizeBody, device, work: Path, tag: str, prefix: str,
                     report: BodyReport) -> Path:
    specs = captured_specs(taken)
    src = work / f"{tag}.fp32.onnx"
    onnx.save(standalone_body(fmodel, body, value_infos(specs)), str(src))
    source = CapturedSource(f"{prefix.rstrip('/')} (captured)", taken, specs)
    dst = work / f"{tag}.int8.onnx"
    notes: list[str] = []
    quantize_body(src, dst, source, notes)
    report.notes.extend(f"{prefix.rstrip('/')}: {n}" for n in notes)
    done, nested = quantize_if_bodies(src, dst, work / f"{tag}.nested.onnx", source, quantize_body,
                                      device=device, work=work, prefix=prefix)
    report.quantized.update(nested.quantized)
    report.float_bodies.update(nested.float_bodies)
    report.notes.extend(nested.notes)
    return done


# ---- shared with the per-node sensitivity of branches (edgequant.sensitivity_bodies) ------------

def ifs_with_compute(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The top-level Ifs of ``graph`` a branch of which holds compute, in graph order (the order
    :func:`graft_tag` numbers unnamed ones by)."""
    return [n for n in graph.node if n.op_type == "If" and any(has_compute(b) for _, b in node_bodies(n))]


def matching_if(graph: onnx.GraphProto, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """``node``'s If in another version of the graph (the quantized one): the If with its outputs."""
    return next((n for n in graph.node if n.op_type == "If" and list(n.output) == list(node.output)), None)


def branch_label(prefix: str, node: onnx.NodeProto, attr: str) -> str:
    """``If_0/then_branch``: how reports name a branch (``prefix`` names the enclosing branches)."""
    return f"{prefix}{node.name or 'If'}/{attr}"


def graft_tag(prefix: str, node: onnx.NodeProto, k: int, attr: str) -> str:
    """The suffix :func:`~edgequant.qdq.subgraphs.graft_body` gave the names the quantizer created
    in this branch (``k``: the If's index in :func:`ifs_with_compute`)."""
    return _tag(f"{prefix}{node.name or f'if{k}'}_{attr}")


def value_infos(specs: Sequence[TensorSpec]) -> list[onnx.ValueInfoProto]:
    """Graph inputs for a branch cut out, typed from :func:`captured_specs`."""
    return [helper.make_tensor_value_info(s.name, helper.np_dtype_to_tensor_dtype(s.dtype), list(s.shape))
            for s in specs]


def capture_branch_inputs(fmodel: onnx.ModelProto, ifs: list[onnx.NodeProto], calibration, device,
                          path: Path) -> dict[tuple[int, str], list[dict[str, np.ndarray]]]:
    """Per (If index, branch attribute): the outer values the branch reads, one dict per sample taking it."""
    inits = {t.name for t in fmodel.graph.initializer}
    reads = {(k, attr): [n for n in outer_reads(body) if n not in inits]
             for k, node in enumerate(ifs) for attr, body in node_bodies(node)}
    wanted = list(dict.fromkeys([n.input[0] for n in ifs] + [n for names in reads.values() for n in names]))
    aug = onnx.ModelProto()
    aug.CopyFrom(fmodel)
    types = _known_types(fmodel)
    for name in wanted:    # through an Identity: a graph input cannot be requested as an output as is
        aug.graph.node.append(helper.make_node("Identity", [name], [name + _CAPTURE], name=name + _CAPTURE))
        vi = onnx.ValueInfoProto()
        if name in types:
            vi.CopyFrom(types[name])
        vi.name = name + _CAPTURE
        aug.graph.output.append(vi)
    onnx.save(aug, str(path))
    rows: dict[tuple[int, str], list[dict[str, np.ndarray]]] = {key: [] for key in reads}
    held = 0
    for (outs,), _ in device.iter_outputs([path], calibration, outputs=[[n + _CAPTURE for n in wanted]]):
        for k, node in enumerate(ifs):
            attr = "then_branch" if bool(np.asarray(outs[node.input[0] + _CAPTURE]).reshape(-1)[0]) else "else_branch"
            row = {n: np.asarray(outs[n + _CAPTURE]) for n in reads[(k, attr)]}
            size = sum(v.nbytes for v in row.values())
            if held + size <= CAPTURE_LIMIT_BYTES or not rows[(k, attr)]:
                rows[(k, attr)].append(row)
                held += size
    return rows


def _known_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - contrib ops: what the file declares
        inferred = model
    g = inferred.graph
    return {vi.name: vi for vi in (*g.value_info, *g.output, *g.input) if vi.type.tensor_type.elem_type}


def captured_specs(rows: list[dict[str, np.ndarray]]) -> list[TensorSpec]:
    """Input specs from the captured values: a dim that varies across samples is dynamic."""
    specs = []
    for name, first in rows[0].items():
        shapes = {r[name].shape for r in rows}
        dims = tuple(d if all(s[i] == d for s in shapes) else f"{name}_d{i}" for i, d in enumerate(first.shape))
        specs.append(TensorSpec(name, first.dtype, dims))
    return specs


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
