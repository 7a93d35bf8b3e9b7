"""Per-node quantization sensitivity: which node *introduces* the INT8 error, on calibration data.

Method (as onnxruntime's ``qdq_loss_debug``): expose every float activation of the FP32 model
and of its static QDQ twin as graph outputs, run both on the same samples with graph
optimization off, and compare each tensor's quantized value (the ``DequantizeLinear`` output
the next op consumes) with its FP32 value as SQNR. A node's *drop* is the SQNR it loses
relative to its inputs: ranking by drop names the node that creates the error instead of every
node downstream of it. Statistics are accumulated per sample (sums, maxima and a fixed-size
histogram per tensor), so memory does not grow with the number of samples. Tensors whose range is dominated by outliers (raw detection regressors, one
huge channel) are flagged: 8-bit per-tensor steps cannot resolve them, 16-bit or float can.

Names refer to the *prepared* graph the quantizer saw (after ORT pre-processing), which is the
namespace ``nodes_to_exclude`` and ``TensorQuantOverrides`` use.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .algorithms.histogram import StreamingHistogram
from .errors import EdgequantError
from .qdq.graph import GraphIndex, dequantize_constant, expose_reduced, expose_tensors, float_tensors

DQ_SUFFIX = "_DequantizeLinear_Output"
Q_INPUT_SUFFIX = "_QuantizeLinear_Input"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Ops that carry real arithmetic whose weights or inputs quantization can damage.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "MultiHeadAttention"})
SQNR_CAP_DB = 100.0             # "no measurable error" (also the input SQNR of an unquantized graph input)
OUTLIER_RATIO_FLAG = 16.0       # absmax / p99.9(|x|): 8-bit leaves <= 16 levels for 99.9% of the values
CHANNEL_SPREAD_FLAG = 64.0      # max / median per-channel absmax: the median channel gets <= 4 levels
PASS_BYTES = 64 << 20           # activations exposed per pass over the samples (x3: FP32, QDQ, raw)
HIST_BINS = 4096                # |x| histogram per tensor (32 KB): p99.9 within 1/1024 of the range


def base_tensor(name: str) -> str:
    """FP32 tensor name of a QDQ-model tensor (strips the quantizer's Q/DQ suffixes)."""
    for suffix in (DQ_SUFFIX, Q_INPUT_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sqnr_from_sums(signal: float, noise: float) -> float:
    """SQNR in dB from sum(x^2) and sum((x - q)^2), capped so JSON stays finite."""
    if noise <= 0.0:
        return SQNR_CAP_DB
    if signal <= 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


@dataclass(frozen=True)
class TensorRange:
    """Range facts of one activation, and whether 8-bit per-tensor quantization can resolve it."""

    name: str
    sqnr_db: float
    absmax: float
    p999: float
    outlier_ratio: float
    channel_spread: float | None
    graph_output: bool
    flag: str | None          # why it needs 16-bit / float, or None


@dataclass(frozen=True)
class NodeSensitivity:
    """How much quantization error one node of the QDQ graph adds."""

    name: str
    op_type: str
    output_sqnr_db: float
    input_sqnr_db: float
    drop_db: float                    # input_sqnr_db - output_sqnr_db (>= 0): error this node introduces
    weight_sqnr_db: float | None
    cause: str                        # weights | activations | inherited
    outputs: tuple[str, ...]
    region: tuple[str, ...]           # nodes to exclude so this node really runs in float

    def explain(self) -> str:
        """One line for reports: why this node is sensitive."""
        w = f", weights {self.weight_sqnr_db:.1f} dB" if self.weight_sqnr_db is not None else ""
        return (f"{self.op_type} whose output SQNR is {self.output_sqnr_db:.1f} dB, "
                f"{self.drop_db:.1f} dB below its inputs{w}; cause: {self.cause}")


@dataclass
class SensitivityReport:
    """Nodes ranked by the error they introduce, plus tensors with outlier-dominated ranges."""

    nodes: list[NodeSensitivity]          # ranked: largest drop first
    tensors: dict[str, TensorRange]
    samples: int
    float_model: str
    qdq_model: str
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[TensorRange]:
        return [t for t in self.tensors.values() if t.flag]

    def by_sqnr(self) -> list[NodeSensitivity]:
        """Nodes by lowest output SQNR first (everything downstream of an error shows up here)."""
        return sorted(self.nodes, key=lambda n: n.output_sqnr_db)

    def node(self, name: str) -> NodeSensitivity | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        return {"samples": self.samples, "ranked": [asdict(n) for n in self.nodes[:top]],
                "flagged_tensors": [asdict(t) for t in self.flagged], "notes": list(self.notes)}


# ---- graph plumbing -------------------------------------------------------------------------

def analysis_device(threads: int):
    """The CPU device with graph optimization off: every intermediate tensor stays observable."""
    from .devices import analysis_cpu
    from .measure.session import SessionConfig

    return analysis_cpu(SessionConfig(graph_optimization="disable", intra_op_threads=threads))


def _weights_of(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, float]:
    """SQNR (dB) of each dequantized weight against the float initializer it came from."""
    idx = GraphIndex.build(qdq.graph)
    f_inits = {t.name: t for t in float_model.graph.initializer}
    out: dict[str, float] = {}
    for node in qdq.graph.node:
        fname = node.input[0].removesuffix("_quantized") if node.input else ""
        if node.op_type != "DequantizeLinear" or fname not in f_inits:
            continue
        deq = dequantize_constant(node, idx)
        w = numpy_helper.to_array(f_inits[fname]).astype(np.float64)
        if deq is None or w.shape != deq.shape:
            continue
        out[node.output[0]] = sqnr_from_sums(float(np.sum(w * w)), float(np.sum((w - deq) ** 2)))
    return out


# ---- statistics -----------------------------------------------------------------------------

@dataclass
class _Acc:
    """Running sums for one tensor: SQNR, range, per-channel absmax and a histogram of |x|."""

    signal: float = 0.0
    noise: float = 0.0
    noise_raw: float | None = None      # before the output's own Q/DQ: error from inputs and weights
    absmax: float = 0.0
    channel_max: np.ndarray | None = None
    channels_ok: bool = True
    hist: StreamingHistogram | None = None

    def add(self, ref: np.ndarray, cand: np.ndarray | None, *, ranges: bool,
            raw: np.ndarray | None = None) -> None:
        ref64 = ref.astype(np.float64, copy=False)
        if cand is not None and cand.ndim == ref.ndim >= 2 and cand.shape[1] > ref.shape[1] \
                and cand.shape[2:] == ref.shape[2:] and cand.shape[0] == ref.shape[0]:
            cand = cand[:, :ref.shape[1]]   # a stem input padded with zero channels (qdq.conv_channels)
        if cand is not None and cand.shape == ref.shape:
            self.signal += float(np.sum(ref64 * ref64))
            self.noise += float(np.sum((ref64 - cand.astype(np.float64, copy=False)) ** 2))
        if raw is not None and raw.shape == ref.shape:
            r64 = raw.astype(np.float64, copy=False)
            # the quantizer drops a Relu whose clipping the output Q does: compare both readings
            err = min(float(np.sum((ref64 - r64) ** 2)), float(np.sum((ref64 - np.maximum(r64, 0.0)) ** 2)))
            self.noise_raw = (self.noise_raw or 0.0) + err
        if not ranges or ref.size == 0:
            return
        mag = np.abs(ref)
        self.absmax = max(self.absmax, float(mag.max()))
        if ref.ndim >= 2 and self.channels_ok:
            ch = np.moveaxis(mag, 1, 0).reshape(mag.shape[1], -1).max(axis=1)
            if self.channel_max is None:
                self.channel_max = ch
            elif self.channel_max.shape == ch.shape:
                self.channel_max = np.maximum(self.channel_max, ch)
            else:
                self.channels_ok = False
        if self.hist is None:
            self.hist = StreamingHistogram(HIST_BINS)
        self.hist.add(mag)

    def range_facts(self) -> tuple[float, float, float | None]:
        p999 = self.hist.abs_quantile(0.999) if self.hist is not None else 0.0
        ratio = self.absmax / p999 if p999 > 0 else (math.inf if self.absmax > 0 else 1.0)
        spread = None
        if self.channels_ok and self.channel_max is not None and self.channel_max.size > 1:
            med = float(np.median(self.channel_max.astype(np.float64)))   # finfo.min masks: float32 overflows
            spread = float(self.channel_max.max() / med) if med > 0 else None
        return p999, float(min(ratio, 1e6)), spread


def _range_flag(ratio: float, spread: float | None) -> str | None:
    if ratio >= OUTLIER_RATIO_FLAG:
        return (f"max |x| is {ratio:.0f}x its 99.9th percentile: 8-bit steps sized for the outliers "
                "flatten everything else (raw regressor-like output)")
    if spread is not None and spread >= CHANNEL_SPREAD_FLAG:
        return (f"one channel's range is {spread:.0f}x the median channel's: per-tensor 8-bit steps "
                "leave the other channels a few levels")
    return None


# ---- analysis -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _QdqNode:
    name: str
    op_type: str
    inputs: tuple[str, ...]         # base (FP32) names of activation inputs
    outputs: tuple[str, ...]        # base names of outputs
    weights: tuple[str, ...]        # DQ outputs fed by initializers
    quantized: bool                 # has a DQ input or a Q after an output
    weight_params: int = 0          # elements of its quantized weights: the INT8 work lost if it goes float


def _qdq_nodes(qdq: onnx.ModelProto) -> list[_QdqNode]:
    inits = {t.name for t in qdq.graph.initializer}
    sizes = {t.name: int(np.prod(t.dims)) if t.dims else 1 for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    q_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    out: list[_QdqNode] = []
    for n in qdq.graph.node:
        if n.op_type in QDQ_OPS or not n.name:
            continue
        acts, weights, dq_in, params = [], [], False, 0
        for i in n.input:
            if not i:
                continue
            p = producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear":
                dq_in = True
                if p.input[0] in inits:
                    weights.append(i)
                    params += sizes[p.input[0]]
                    continue
            if i in inits:
                continue
            acts.append(base_tensor(i))
        outs = tuple(base_tensor(o) for o in n.output)
        quantized = dq_in or any(o in q_inputs for o in n.output)
        out.append(_QdqNode(n.name, n.op_type, tuple(acts), outs, tuple(weights), quantized, params))
    return out


def _regions(nodes: Sequence[_QdqNode]) -> dict[str, tuple[str, ...]]:
    """Nodes to exclude so a node really stays float in ORT.

    Excluding only the node is not enough: ORT's session-time WeightBiasQuantization re-quantizes a
    float Conv/Gemm whose input comes from a DequantizeLinear and whose output goes to a
    QuantizeLinear, and the quantizer rewires *every* consumer of a quantized tensor, excluded or
    not. So one side of the node must stay float: its outputs (exclude their quantized consumers)
    or its inputs (exclude their producers and their other consumers). The side that takes fewer
    weights out of INT8 wins.
    """
    by_name = {n.name: n for n in nodes}
    quantized = {n.name for n in nodes if n.quantized}
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n.name)
        for t in n.outputs:
            producer[t] = n.name

    def float_tensors(tensors: Sequence[str]) -> list[str]:
        side: list[str] = []
        for t in tensors:
            side += [c for c in consumers.get(t, []) if c in quantized]
            if producer.get(t) in quantized:
                side.append(producer[t])
        return side

    def cost(names: Sequence[str]) -> int:
        return sum(by_name[x].weight_params for x in set(names))

    regions = {}
    for n in nodes:
        out_side = list(dict.fromkeys([n.name, *float_tensors(n.outputs)]))
        in_side = list(dict.fromkeys([n.name, *float_tensors(n.inputs)]))
        regions[n.name] = tuple(in_side if n.inputs and cost(in_side) < cost(out_side) else out_side)
    return regions


def analyze(float_model: str | Path, qdq_model: str | Path, samples: Iterable[Any], *,
            limit: int = 16, threads: int = 1) -> SensitivityReport:
    """Compare every activation of ``qdq_model`` with ``float_model`` on up to ``limit`` samples."""
    float_model, qdq_model = Path(float_model), Path(qdq_model)
    fproto = onnx.load(str(float_model))
    qproto = onnx.load(str(qdq_model))
    nodes = _qdq_nodes(qproto)
    graph_outputs = {o.name for o in fproto.graph.output}
    wanted_base = {t for n in nodes for t in (*n.inputs, *n.outputs)}
    q_names_all = float_tensors(qproto)
    # the quantized value of FP32 tensor T is T's DQ output when T was quantized, else T itself
    q_for: dict[str, str] = {}
    for t in wanted_base:
        if t + DQ_SUFFIX in q_names_all:
            q_for[t] = t + DQ_SUFFIX
        elif t in q_names_all:
            q_for[t] = t
    dq_outputs = {o for n in qproto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_tensors = {t for t, q in q_for.items() if q in dq_outputs}
    # the value a node produced before its output was quantized (e.g. "g" or "y_QuantizeLinear_Input")
    raw_for = {base_tensor(o): o for n in qproto.graph.node if n.op_type not in QDQ_OPS for o in n.output
               if base_tensor(o) in quantized_tensors and o != q_for.get(base_tensor(o))}
    device = analysis_device(threads)
    acc: dict[str, _Acc] = {}
    count = 0
    with tempfile.TemporaryDirectory(prefix="edgequant-sens-") as tmp:
        f_aug, q_aug = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        # a few tensors at a time (one pass over the samples each): every activation of both graphs
        # at once is GBs on a text recognizer, and peak memory should not grow with the model
        for group in _tensor_groups(float_model, wanted_base, samples, device, Path(tmp) / "sizes.onnx"):
            f_names = expose_tensors(float_model, f_aug, group)
            q_names = expose_tensors(qdq_model, q_aug, {m[t] for m in (q_for, raw_for) for t in group if t in m})
            acc.update({t: _Acc() for t in f_names})
            passed = 0
            for (fvals, qvals), _label in device.iter_outputs([f_aug, q_aug], itertools.islice(samples, limit),
                                                               outputs=[f_names, q_names]):
                for t, ref in fvals.items():
                    cand = qvals.get(q_for.get(t, ""))
                    raw = qvals.get(raw_for.get(t, ""))
                    acc[t].add(np.asarray(ref), None if cand is None else np.asarray(cand),
                               ranges=t in quantized_tensors, raw=None if raw is None else np.asarray(raw))
                passed += 1
                del fvals, qvals
            count = passed
    if count == 0:
        raise EdgequantError(f"{float_model}: no calibration samples for the sensitivity analysis")
    tensors = _tensor_ranges(acc, quantized_tensors, graph_outputs)
    weight_sqnr = _weights_of(qproto, fproto)
    ranked = _rank(nodes, acc, weight_sqnr)
    notes = []
    missing = [t for t in wanted_base if t not in acc]
    if missing:
        notes.append(f"{len(missing)} tensors of the QDQ graph have no FP32 counterpart (renamed by pre-processing)")
    return SensitivityReport(ranked, tensors, count, str(float_model), str(qdq_model), notes)


def _tensor_groups(float_model: Path, wanted: set[str], samples: Iterable[Any], device, sized: Path,
                   ) -> list[list[str]]:
    """``wanted`` tensors of ``float_model`` grouped so each group's activations on the first sample
    (sized in-graph) hold about ``PASS_BYTES`` (every pass runs the whole graph: order is immaterial)."""
    sizes = expose_reduced(float_model, sized, wanted, ops=("Size",))
    names = list(sizes)
    first = next(iter(device.iter_outputs([sized], itertools.islice(samples, 1),
                                          outputs=[[sizes[t][0] for t in names]])), None)
    if first is None:
        return [names]
    (values,), _ = first
    groups: list[list[str]] = [[]]
    held = 0
    for t in names:
        nbytes = 4 * int(np.asarray(values[sizes[t][0]]))
        if groups[-1] and held + nbytes > PASS_BYTES:
            groups.append([])
            held = 0
        groups[-1].append(t)
        held += nbytes
    return groups


def _tensor_ranges(acc: Mapping[str, _Acc], quantized: set[str], graph_outputs: set[str]) -> dict[str, TensorRange]:
    out = {}
    for t, a in acc.items():
        if t not in quantized:
            continue
        p999, ratio, spread = a.range_facts()
        out[t] = TensorRange(t, sqnr_from_sums(a.signal, a.noise), a.absmax, p999, ratio, spread,
                             t in graph_outputs, _range_flag(ratio, spread))
    return out


def _rank(nodes: Sequence[_QdqNode], acc: Mapping[str, _Acc], weight_sqnr: Mapping[str, float]) -> list[NodeSensitivity]:
    regions = _regions(nodes)
    result = []
    for n in nodes:
        if not n.quantized:
            continue
        outs = [sqnr_from_sums(acc[t].signal, acc[t].noise) for t in n.outputs if t in acc and acc[t].noise >= 0
                and acc[t].signal > 0]
        if not outs:
            continue
        ins = [sqnr_from_sums(acc[t].signal, acc[t].noise) for t in n.inputs if t in acc and acc[t].signal > 0]
        out_db, in_db = min(outs), min(ins) if ins else SQNR_CAP_DB
        drop = max(0.0, in_db - out_db)
        w = [weight_sqnr[x] for x in n.weights if x in weight_sqnr]
        w_db = min(w) if w else None
        raws = [sqnr_from_sums(acc[t].signal, acc[t].noise_raw) for t in n.outputs
                if t in acc and acc[t].noise_raw is not None and acc[t].signal > 0]
        raw_db = min(raws) if raws else None
        if drop < 1.0:
            cause = "inherited"
        elif raw_db is not None and raw_db > out_db + 3.0:
            cause = "activations"       # fine before its output Q/DQ: the output's 8-bit range is the problem
        elif n.weights:
            cause = "weights"           # already wrong before the output is quantized
        else:
            cause = "activations"
        result.append(NodeSensitivity(n.name, n.op_type, out_db, in_db, drop, w_db, cause, n.outputs, regions[n.name]))
    return sorted(result, key=lambda s: (-s.drop_db, s.output_sqnr_db))


# ---- one-call entry point -------------------------------------------------------------------

def prepared_float_model(model_path: Path, work: Path, target: str = "auto") -> Path:
    """The FP32 graph the static quantizer actually sees (the same :func:`~edgequant.qdq.prepare.prepare`).

    Falls back to the original model if preparation fails (names then match less often).
    """
    from .qdq.prepare import prepare
    from .targets import resolve_target

    try:
        return prepare(model_path, work, mode="static", per_channel=resolve_target(target).per_channel,
                       target=target).path
    except Exception:  # noqa: BLE001 - analysis still works on the original names, just less of it
        return model_path


def analyze_model(model_path: str | Path, qdq_model: str | Path, calibration, *, target: str = "auto",
                  limit: int = 16, threads: int = 1) -> SensitivityReport:
    """Sensitivity of ``qdq_model`` (a static QDQ quantization of ``model_path``) on ``calibration``."""
    with tempfile.TemporaryDirectory(prefix="edgequant-prep-") as tmp:
        ref = prepared_float_model(Path(model_path), Path(tmp), target)
        report = analyze(ref, qdq_model, calibration, limit=limit, threads=threads)
        if ref == Path(model_path):
            report.notes.append("pre-processing the FP32 model failed; compared against the original graph")
        report.float_model = str(model_path)
        return report
