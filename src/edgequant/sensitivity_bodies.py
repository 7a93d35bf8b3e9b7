"""Per-node sensitivity inside quantized If branches: body nodes ranked with the top-level ones.

:func:`edgequant.sensitivity.analyze` pairs the tensors of the FP32 graph and its QDQ twin by
exposing them as graph outputs, which a tensor inside an If branch cannot be (silero_vad: every
Conv sits in one). Static mode quantized each branch as a model of its own, on the outer values
the branch reads, captured for the calibration samples that take it
(:mod:`edgequant.qdq.subgraph_static`). The analysis takes the same cut: for every branch the QDQ
model holds quantized, the FP32 branch of the prepared graph and its quantized graft (names
restored as the quantizer wrote them) become two models whose inputs are those outer values,
and ``analyze`` compares them on the values the FP32 model passed the branch, for the analysed
samples that take it. Ifs nested in such a branch likewise, one level down.

Why one ranking can hold both: a node's *drop* is the SQNR it loses relative to its own inputs,
so a branch fed exact (FP32) inputs yields the error each of its nodes introduces, which is what
the top-level ranking sorts by (what the branch inherits from quantized top-level producers is
those producers' drop). Names are the prepared graph's: the namespace of ``--exclude`` and of
tune's float fallbacks, which the static recipe applies to every branch it quantizes.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path

import onnx

from .qdq.subgraph_static import (
    CapturedSource,
    branch_label,
    capture_branch_inputs,
    captured_specs,
    graft_tag,
    ifs_with_compute,
    matching_if,
    value_infos,
)
from .qdq.subgraphs import all_nodes, has_compute, node_bodies, standalone_body, ungrafted
from .sensitivity import QDQ_OPS, SensitivityReport, analysis_device, analyze, prepared_float_model


def analyze_model_with_bodies(model_path: str | Path, qdq_model: str | Path, calibration, *, target: str = "auto",
                              limit: int = 16, threads: int = 1) -> SensitivityReport:
    """Sensitivity of ``qdq_model`` (a static QDQ quantization of ``model_path``) on ``calibration``:
    top-level nodes and the nodes of every quantized If branch, in one ranking."""
    with tempfile.TemporaryDirectory(prefix="edgequant-sens-bodies-") as tmp:
        work = Path(tmp)
        ref = prepared_float_model(Path(model_path), work, target)
        report = analyze(ref, qdq_model, calibration, limit=limit, threads=threads)
        if ref == Path(model_path):
            report.notes.append("pre-processing the FP32 model failed; compared against the original graph")
        add_branches(report, ref, Path(qdq_model), calibration, limit=limit, threads=threads, work=work)
        report.float_model = str(model_path)
        return report


def _holds_quantized(body: onnx.GraphProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in all_nodes(body))


def add_branches(report: SensitivityReport, float_model: Path, qdq_model: Path, samples, *, limit: int,
                 threads: int, work: Path, prefix: str = "") -> None:
    """Rank the nodes of every quantized If branch of ``qdq_model`` into ``report`` (in place)."""
    fmodel, qmodel = onnx.load(str(float_model)), onnx.load(str(qdq_model))
    ifs = ifs_with_compute(fmodel.graph)
    pairs = []
    for k, node in enumerate(ifs):
        qnode = matching_if(qmodel.graph, node)
        qbodies = dict(node_bodies(qnode)) if qnode is not None else {}
        pairs += [(k, node, attr, body, qbodies[attr]) for attr, body in node_bodies(node)
                  if has_compute(body) and attr in qbodies and _holds_quantized(qbodies[attr])]
    if not pairs:
        return
    capture = work / f"capture_{re.sub(r'[^A-Za-z0-9_]+', '_', prefix) or 'top'}.onnx"
    rows = capture_branch_inputs(fmodel, ifs, itertools.islice(samples, limit), analysis_device(threads), capture)
    analysed: set[str] = set()
    for k, node, attr, body, qbody in pairs:
        label = branch_label(prefix, node, attr)
        taken = rows[(k, attr)]
        if not taken:
            report.notes.append(f"{label}: quantized, but none of the analysed samples takes it: its nodes are not ranked")
            continue
        tag = graft_tag(prefix, node, k, attr)
        specs = captured_specs(taken)
        f_path, q_path = work / f"{tag}.fp32.onnx", work / f"{tag}.qdq.onnx"
        onnx.save(standalone_body(fmodel, body, value_infos(specs)), str(f_path))
        onnx.save(standalone_body(qmodel, ungrafted(qbody, tag), value_infos(specs)), str(q_path))
        source = CapturedSource(f"{label} (captured)", taken, specs)
        try:
            sub = analyze(f_path, q_path, source, limit=len(taken), threads=threads)
        except Exception as exc:  # noqa: BLE001 - the rest of the ranking still holds
            report.notes.append(f"{label}: its nodes are not ranked: analysing the branch failed: "
                                + " ".join(str(exc).split())[:200])
            continue
        analysed.add(node.name)
        report.nodes.extend(sub.nodes)
        for name, tensor in sub.tensors.items():
            report.tensors.setdefault(name, tensor)
        report.notes.append(f"{label}: {len(sub.nodes)} quantized node(s) ranked on the {len(taken)} analysed "
                            "sample(s) that take it")
        report.notes.extend(f"{label}: {n}" for n in sub.notes)
        add_branches(report, f_path, q_path, source, limit=len(taken), threads=threads, work=work,
                     prefix=label + "/")
    # an If's own entry is its branches' error, now told node by node; excluding an If keeps nothing float
    report.nodes = sorted((n for n in report.nodes if not (n.op_type == "If" and n.name in analysed)),
                          key=lambda s: (-s.drop_db, s.output_sqnr_db))
