"""Selective INT8: keep a node in INT8 only where it is measurably faster than FP32 with its Q/DQ.

Full INT8 coverage is not always a win. On small convolutions (MediaPipe's face mesh: 16-32
channel depthwise/pointwise blocks) ORT's u8s8 kernels are no faster than its FP32 NCHWc
kernels, and every float-only op (per-channel PRelu: ORT has no QDQ selector for it) costs a
standalone QuantizeLinear + DequantizeLinear + layout Transposes. This module

1. quantizes the whole model with :func:`edgequant.qdq.quantize_static_optimized`;
2. profiles FP32 and INT8 per node (ORT profiler ``_kernel_time`` events; names at the ALL
   level are the original node names plus ``_nchwc`` / ``_token_N`` suffixes);
3. fits a cost model ``sum(INT8 or FP32 node time) + c * elements crossing a float/INT8 boundary``
   whose two end points (all INT8, all FP32) reproduce the measured profiles exactly, and
   searches (greedy, legal moves only) for the set of nodes to leave in float;
4. builds the candidates by *removing* Q/DQ around the float nodes (a post-pass on the INT8
   model, see :func:`apply_float_nodes`), checks on ORT's optimized graph that they really run
   float, and A/B-times FP32, full INT8 and the candidates interleaved in one process;
5. returns the fastest candidate that beats FP32 outside the noise, or says that no faster
   INT8 model was found, with the per-node profile that shows why.

Why a post-pass and not ``nodes_to_exclude``: ORT 1.32's ``WeightBiasQuantization`` re-quantizes
a float-weight Conv/Gemm sitting between a DequantizeLinear and a QuantizeLinear at load time,
so an excluded node whose neighbours are quantized runs INT8 anyway (benchmarks/FINDINGS.md).
Here a float node reads its input *before* the Q when the producer is float too, and a float
node that would still sit between a DQ (from an INT8 producer) and a Q (to an INT8 consumer)
is an illegal configuration the search never proposes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgequant.qdq.coverage import optimized_graph
from edgequant.qdq.graph import GraphIndex
from edgequant.rewrites import decompose_prelu  # noqa: F401 - moved; kept importable here

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_SUFFIX = re.compile(r"(_nchwc|_token_\d+|_nhwc)+$")

#: ``profiler(model_path) -> {node_name: mean kernel microseconds per run}``.
Profiler = Callable[[Path], dict[str, float]]
#: ``timer({name: path}) -> {name: {"median_ms", "speedup", "ci95_low", "ci95_high"}}``; the
#: first entry is the FP32 reference the speedups are relative to.
Timer = Callable[[dict[str, Path]], dict[str, dict[str, float]]]


# --------------------------------------------------------------------------- graph analysis

@dataclass
class QdqPlan:
    """Facts about a fully quantized QDQ model that the search needs.

    ``units``: nodes ORT runs as integer kernels (their names); ``float_ops``: non-Q/DQ nodes
    ORT keeps float even in the full INT8 model (e.g. PRelu); ``pairs``: activation tensor ->
    (producer node name or None for a graph input, consumer node names through its DQs).
    """

    units: list[str]
    op_type: dict[str, str]
    float_ops: set[str]
    pairs: dict[str, tuple[str | None, list[str]]]
    inputs_of: dict[str, list[str]]            # unit -> activation tensors it reads via a DQ
    outputs_of: dict[str, list[str]]           # node -> pair tensors it produces
    graph_output_tensors: set[str] = field(default_factory=set)   # pair tensors whose DQ is a graph output
    feeds_float_consumer: dict[str, bool] = field(default_factory=dict)  # pair tensor read raw by a float op

    def islands(self) -> list[list[str]]:
        """Connected groups of units joined by a pair tensor that an INT8 unit both writes and reads."""
        parent = {u: u for u in self.units}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        units = set(self.units)
        for prod, cons in self.pairs.values():
            if prod in units:
                for c in cons:
                    if c in units:
                        parent[find(c)] = find(prod)
        groups: dict[str, list[str]] = defaultdict(list)
        for u in self.units:
            groups[find(u)].append(u)
        return list(groups.values())


def _dq_activation_source(dq: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """The float tensor a DQ re-creates: the input of its Q (None for constant weights/biases)."""
    q = idx.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or idx.const(q.input[0]) is not None:
        return None
    return q.input[0]


def analyse(qmodel: onnx.ModelProto, optimized_extended: onnx.ModelProto) -> QdqPlan:
    """Units, float-only ops and activation Q/DQ pairs of a QDQ model.

    A non-Q/DQ node is a *unit* when ORT fuses it into an integer kernel: in the EXTENDED-level
    optimized graph (which keeps original node names) it no longer reads a DequantizeLinear
    output. A node that still does is float even in the full INT8 model.
    """
    g = qmodel.graph
    idx = GraphIndex.build(g)
    opt = optimized_extended.graph
    opt_idx = GraphIndex.build(opt)
    opt_by_name = {n.name: n for n in opt.node}

    def still_float(name: str, op_type: str) -> bool:
        n = opt_by_name.get(name)
        if n is None or n.op_type != op_type:
            return False
        return any((p := opt_idx.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)

    units: list[str] = []
    float_ops: set[str] = set()
    op_type: dict[str, str] = {}
    inputs_of: dict[str, list[str]] = {}
    outputs_of: dict[str, list[str]] = defaultdict(list)
    pairs: dict[str, tuple[str | None, list[str]]] = {}
    raw_float_read: dict[str, bool] = defaultdict(bool)
    to_output: set[str] = set()
    for n in g.node:
        if n.op_type in QDQ_OPS:
            continue
        op_type[n.name] = n.op_type
        acts = []
        touches_qdq = False
        for i in n.input:
            p = idx.producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear":
                touches_qdq = True
                src = _dq_activation_source(p, idx)
                if src is not None:
                    acts.append(src)
        outs_to_q = any(c.op_type == "QuantizeLinear" for o in n.output for c in idx.consumers.get(o, []))
        if not (touches_qdq or outs_to_q):
            float_ops.add(n.name)  # never quantized
            continue
        if not touches_qdq or still_float(n.name, n.op_type):
            float_ops.add(n.name)
        else:
            units.append(n.name)
            inputs_of[n.name] = acts
    for q in g.node:
        if q.op_type != "QuantizeLinear" or idx.const(q.input[0]) is not None:
            continue
        t = q.input[0]
        prod = idx.producer.get(t)
        cons = pairs.get(t, (None, []))[1]
        for dq in idx.consumers.get(q.output[0], []):
            if dq.op_type == "DequantizeLinear":
                cons = cons + [c.name for c in idx.consumers.get(dq.output[0], [])]
        pname = prod.name if prod is not None else None
        pairs[t] = (pname, cons)
        if any(dq.op_type == "DequantizeLinear" and dq.output[0] in {o.name for o in g.output}
               for dq in idx.consumers.get(q.output[0], [])):
            to_output.add(t)
        if pname is not None and t not in outputs_of[pname]:
            outputs_of[pname].append(t)
        raw_float_read[t] = any(c.op_type != "QuantizeLinear" for c in idx.consumers.get(t, []))
    return QdqPlan(units=units, op_type=op_type, float_ops=float_ops, pairs=pairs, inputs_of=inputs_of,
                   outputs_of=dict(outputs_of), graph_output_tensors=to_output,
                   feeds_float_consumer=dict(raw_float_read))


def sandwiched(plan: QdqPlan, float_nodes: set[str]) -> list[str]:
    """Float nodes ORT would re-quantize: a DQ from an INT8 producer in, a Q to an INT8 consumer out."""
    int8 = set(plan.units) - float_nodes
    bad = []
    for u in float_nodes:
        dq_in = any(plan.pairs.get(t, (None, []))[0] in int8 for t in plan.inputs_of.get(u, []))
        # a pair feeding a graph output keeps its Q (the output name is the DQ's), so it counts as INT8
        q_out = any(c in int8 for t in plan.outputs_of.get(u, []) for c in plan.pairs[t][1]) \
            or any(t in plan.graph_output_tensors for t in plan.outputs_of.get(u, []))
        if dq_in and q_out:
            bad.append(u)
    return sorted(bad)


def boundaries(plan: QdqPlan, float_nodes: set[str], numel: Mapping[str, int]) -> tuple[int, int]:
    """(count, elements) of standalone Q/DQ at float/INT8 boundaries (each with its layout Transpose)."""
    int8 = set(plan.units) - float_nodes
    count = total = 0
    default = int(np.median(list(numel.values()))) if numel else 1
    for t, (prod, cons) in plan.pairs.items():
        n = numel.get(t, default)
        prod_int8 = prod in int8
        any_int8 = any(c in int8 for c in cons)
        any_float = any(c not in int8 for c in cons) or t in plan.graph_output_tensors \
            or plan.feeds_float_consumer.get(t, False)
        k = (not prod_int8 and any_int8) + (prod_int8 and any_float)
        count += k
        total += n * k
    return count, total


def boundary_elements(plan: QdqPlan, float_nodes: set[str], numel: Mapping[str, int]) -> int:
    """Elements that cross a float/INT8 boundary (a standalone Q or DQ, plus its layout Transpose)."""
    return boundaries(plan, float_nodes, numel)[1]


# --------------------------------------------------------------------------- cost model + search

@dataclass
class CostModel:
    """Estimated kernel time (us) of a model with ``float_nodes`` left in FP32."""

    plan: QdqPlan
    fp32_us: dict[str, float]
    int8_us: dict[str, float]
    numel: dict[str, int]
    constant_us: float           # float-only ops + FP32 layout reorders (same in every variant)
    boundary_us_per_element: float
    boundary_us_fixed: float = 0.0   # per standalone Q/DQ (+ Transpose): kernel launch, layout change

    def cost(self, float_nodes: set[str]) -> float:
        units = self.plan.units
        count, elements = boundaries(self.plan, float_nodes, self.numel)
        return (self.constant_us
                + sum(self.fp32_us[u] if u in float_nodes else self.int8_us[u] for u in units)
                + self.boundary_us_per_element * elements + self.boundary_us_fixed * count)

    @classmethod
    def fit(cls, plan: QdqPlan, fp32_profile: Mapping[str, float], int8_profile: Mapping[str, float],
            numel: Mapping[str, int], aliases: Mapping[str, str] | None = None) -> CostModel:
        """Per-unit times from the two profiles; the boundary cost closes the gap to the measured totals.

        ``aliases`` maps profile names (after suffix stripping) to unit names, e.g. the output tensor
        name ORT's NCHWc pass gives a fused Conv+Clip (:func:`profile_aliases`). A unit missing
        from one profile is taken as equally fast in both, so the search never bets on an
        unmeasured node.
        """
        al = dict(aliases or {})
        f: dict[str, float] = defaultdict(float)
        for k, v in _merge(fp32_profile).items():
            f[al.get(k, k)] += v
        q: dict[str, float] = defaultdict(float)
        for k, v in _merge(int8_profile).items():
            q[al.get(k, k)] += v
        fp32_us, int8_us = {}, {}
        for u in plan.units:
            a, b = f.get(u), q.get(u)
            if a is None and b is None:
                a = b = 0.0
            fp32_us[u] = a if a is not None else b
            int8_us[u] = b if b is not None else a
        fp32_total, int8_total = sum(fp32_profile.values()), sum(int8_profile.values())
        constant = max(fp32_total - sum(fp32_us.values()), 0.0)
        n_full, b_full = boundaries(plan, set(), numel)
        extra = max(int8_total - sum(int8_us.values()) - constant, 0.0)
        fixed = min(_fixed_qdq_cost(int8_profile, numel), extra / n_full if n_full else 0.0)
        per_el = max(extra - fixed * n_full, 0.0) / b_full if b_full else 0.0
        return cls(plan, fp32_us, int8_us, dict(numel), constant, per_el, fixed)


FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh"})


def profile_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Profile names -> node names: ORT's layout passes name a node after its output tensor, and
    a Conv fused with its activation appears under the activation's name or output."""
    idx = GraphIndex.build(model.graph)
    al: dict[str, str] = {}
    for n in model.graph.node:
        target = n.name
        if n.op_type in FUSABLE_ACTIVATIONS and n.input:
            p = idx.producer.get(n.input[0])
            if p is not None and p.op_type in {"Conv", "Gemm", "MatMul"} and len(idx.consumers.get(n.input[0], [])) == 1:
                target = p.name
                al[n.name] = target
        for o in n.output:
            if o and o != n.name:
                al.setdefault(o, target)
    return al


_QDQ_NAME = re.compile(r"^(.*)_(QuantizeLinear|DequantizeLinear)(_\d+)?$")


def _fixed_qdq_cost(int8_profile: Mapping[str, float], numel: Mapping[str, int]) -> float:
    """Intercept of ``time = a + b * elements`` over the standalone Q/DQ nodes of the INT8 profile:
    what a boundary costs regardless of its size (0 when there are too few points)."""
    xs, ys = [], []
    for name, us in int8_profile.items():
        m = _QDQ_NAME.match(_base(name))
        if m and m.group(1) in numel:
            xs.append(numel[m.group(1)])
            ys.append(us)
    if len(xs) < 4 or len(set(xs)) < 2:
        return 0.0
    _slope, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(max(a, 0.0))


def _base(name: str) -> str:
    return _SUFFIX.sub("", name)


def _merge(profile: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for k, v in profile.items():
        out[_base(k)] += v
    return dict(out)


def search_float_nodes(model: CostModel, *, max_steps: int = 500,
                       start: Iterable[set[str]] | None = None) -> tuple[set[str], float]:
    """Greedy hill climbing over legal float sets; moves toggle one unit or one island."""
    plan = model.plan
    moves = [{u} for u in plan.units] + [set(i) for i in plan.islands() if len(i) > 1]
    best_f, best_c = set(), model.cost(set())
    for f0 in (start if start is not None else (set(), set(plan.units))):
        f = set(f0)
        if sandwiched(plan, f):
            continue
        c = model.cost(f)
        for _ in range(max_steps):
            step_best: tuple[float, set[str]] | None = None
            for m in moves:
                g = f ^ m
                if sandwiched(plan, g):
                    continue
                cg = model.cost(g)
                if cg < c - 1e-9 and (step_best is None or cg < step_best[0]):
                    step_best = (cg, g)
            if step_best is None:
                break
            c, f = step_best
        if c < best_c:
            best_f, best_c = f, c
    return best_f, best_c


# --------------------------------------------------------------------------- rewrite

def apply_float_nodes(qmodel: onnx.ModelProto, float_nodes: Iterable[str],
                      fp32_model: onnx.ModelProto | None = None, *,
                      units: Iterable[str] | None = None) -> onnx.ModelProto:
    """A copy of ``qmodel`` in which ``float_nodes`` run in FP32.

    ``units`` are the nodes ORT runs as integer kernels in ``qmodel`` (:func:`analyse`; default:
    every non-Q/DQ node reading a DequantizeLinear). Every node that is not INT8 afterwards
    gets float weights/biases (the FP32 original when ``fp32_model`` has one of that name and
    shape, else the dequantized value) and reads an activation *before* its Q/DQ pair when the
    producer is not INT8 either (or is a graph input); from an INT8 producer it reads the DQ.
    Q and DQ nodes left without consumers are removed.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    idx = GraphIndex.build(g)
    floats = set(float_nodes)
    if units is None:
        units = [n.name for n in g.node if n.op_type not in QDQ_OPS
                 and any((p := idx.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)]
    int8 = set(units) - floats
    originals = {t.name: t for t in fp32_model.graph.initializer} if fp32_model is not None else {}

    new_inits: list[onnx.TensorProto] = []
    existing = {t.name for t in g.initializer}
    for n in g.node:
        if n.op_type in QDQ_OPS or n.name in int8:
            continue
        for k, i in enumerate(n.input):
            dq = idx.producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            const = idx.const(dq.input[0])
            if const is not None:
                orig_name = i.removesuffix("_DequantizeLinear_Output")
                value = _dequantize(dq, idx)
                orig = originals.get(orig_name)
                if orig is not None:
                    ov = numpy_helper.to_array(orig)
                    if ov.shape == value.shape and ov.dtype == np.float32:
                        value = ov
                name = f"{orig_name}__float"
                if name not in existing:
                    new_inits.append(numpy_helper.from_array(value.astype(np.float32), name))
                    existing.add(name)
                n.input[k] = name
                continue
            src = _dq_activation_source(dq, idx)
            if src is None:
                continue
            prod = idx.producer.get(src)
            if prod is None or prod.name not in int8:
                n.input[k] = src  # producer float (or graph input): skip the Q/DQ round trip
    g.initializer.extend(new_inits)
    _remove_dead_qdq(m)
    return m


def _dequantize(dq: onnx.NodeProto, idx: GraphIndex) -> np.ndarray:
    x = idx.const(dq.input[0]).astype(np.float64)
    scale = idx.const(dq.input[1]).astype(np.float64)
    zp = idx.const(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((x - zp) * scale).astype(np.float32)


def _remove_dead_qdq(m: onnx.ModelProto) -> None:
    g = m.graph
    outputs = {o.name for o in g.output}
    while True:
        used = Counter(i for n in g.node for i in n.input if i)
        dead = [n for n in g.node if n.op_type in QDQ_OPS and not any(used[o] or o in outputs for o in n.output)]
        if not dead:
            break
        drop = {id(n) for n in dead}
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    keep_init = [t for t in g.initializer if t.name in used or t.name in outputs]
    del g.initializer[:]
    g.initializer.extend(keep_init)
    names = {o for n in g.node for o in n.output}
    keep_vi = [v for v in g.value_info if v.name in names]
    del g.value_info[:]
    g.value_info.extend(keep_vi)


# --------------------------------------------------------------------------- measurement

def node_profile(model_path: str | Path, feeds: Mapping[str, np.ndarray], session_config: Any = None, *,
                 warmup: int = 5, runs: int | None = None, seconds: float = 3.0) -> dict[str, float]:
    """Per-node kernel time (us, median over runs) from ORT's profiler, warm-up runs excluded.

    Medians, not means: on a shared machine a burst of load hits a few runs, not the node.
    ``runs=None`` profiles for about ``seconds`` (30..300 runs).
    """
    import onnxruntime as ort

    from edgequant.measure.session import SessionConfig, session_options

    cfg = session_config or SessionConfig(intra_op_threads=1)
    with tempfile.TemporaryDirectory(prefix="edgequant-sel-prof-") as tmp:
        so = session_options(cfg)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        sess = ort.InferenceSession(str(model_path), so, providers=list(cfg.providers))
        t0 = time.perf_counter()
        for _ in range(warmup):
            sess.run(None, dict(feeds))
        if runs is None:
            per_run = (time.perf_counter() - t0) / max(warmup, 1)
            runs = int(min(300, max(30, seconds / max(per_run, 1e-6))))
        for _ in range(runs):
            sess.run(None, dict(feeds))
        events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    t_first = starts[warmup] if len(starts) > warmup else 0
    per: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= t_first:
            per[e["name"][: -len("_kernel_time")]].append(float(e.get("dur", 0)))
    return {k: float(np.median(v)) * len(v) / runs for k, v in per.items()}


def interleaved_timer(feeds: Mapping[str, np.ndarray], session_config: Any = None, *, rounds: int = 60,
                      warmup: int = 5, seed: int = 0) -> Timer:
    """A :data:`Timer`: every model once per round in a fresh random order (a fixed rotation gives
    each model the same predecessor every round, a bias of ~2% on small models), one process,
    paired bootstrap interval of the ratio of medians against the first model."""
    from edgequant.measure.latency import paired_speedup
    from edgequant.measure.session import SessionConfig, make_session
    from edgequant.qdq.session_tuning import _interleave

    cfg = session_config or SessionConfig(intra_op_threads=1)

    def timer(paths: dict[str, Path]) -> dict[str, dict[str, float]]:
        names = list(paths)
        sessions = {n: make_session(paths[n], cfg) for n in names}
        times = _interleave(sessions, feeds, rounds, warmup, seed)
        ref = times[names[0]]
        out = {}
        for n in names:
            sp = paired_speedup(ref, times[n])
            out[n] = {"median_ms": float(np.median(times[n])), "speedup": sp.ratio, "ci95_low": sp.ci_low,
                      "ci95_high": sp.ci_high, "rounds": rounds}
        return out
    return timer


def _numel(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = model
    out: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            out[vi.name] = int(np.prod(dims))
    return out


# --------------------------------------------------------------------------- public entry point

@dataclass
class SelectiveSummary:
    """What :func:`quantize_selective` measured and decided."""

    model_in: str
    model_out: str | None
    found: bool
    reason: str
    chosen: str                                  # candidate name, or "fp32"
    float_nodes: list[str] = field(default_factory=list)
    int8_nodes: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    node_table: list[dict[str, Any]] = field(default_factory=list)   # per unit: fp32/int8 us, decision
    boundary_us_per_element: float = 0.0
    boundary_us_fixed: float = 0.0
    profile_totals_ms: dict[str, float] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize_selective(
    model_in: str | Path,
    model_out: str | Path,
    calibration_reader_factory: Callable[[], Any],
    *,
    feeds: Mapping[str, np.ndarray],
    base_options: dict[str, Any] | None = None,
    session_config: Any = None,
    time_budget_s: float = 120.0,
    rounds: int | None = None,
    profile_runs: int | None = None,
    min_speedup: float = 1.02,
    profiler: Profiler | None = None,
    timer: Timer | None = None,
) -> SelectiveSummary:
    """Write the fastest INT8/FP32 mix of ``model_in`` that beats FP32, or report why none does.

    ``calibration_reader_factory()`` returns a fresh CalibrationDataReader; ``base_options`` are
    :func:`quantize_static_optimized` keyword arguments (default ``reduce_range=True``);
    ``feeds`` is one input sample for profiling and timing; ``session_config`` an
    :class:`edgequant.measure.session.SessionConfig` (default: 1 intra-op thread). The model is
    written only when a candidate's speedup over FP32 is >= ``min_speedup`` with its 95% interval
    above 1, in the candidates' A/B run *and* in a second A/B run of the winner alone against FP32
    (the best of several noisy candidates is flattered). ``rounds`` defaults to what fits the
    time budget; ``profiler``/``timer`` replace the ORT measurements (tests).
    """
    from edgequant.qdq.recipe import quantize_static_optimized

    t_start = time.perf_counter()
    model_in, model_out = Path(model_in), Path(model_out)
    opts = {"reduce_range": True, **(base_options or {})}
    prof = profiler or (lambda p: node_profile(p, feeds, session_config, runs=profile_runs))
    summary = SelectiveSummary(model_in=str(model_in), model_out=None, found=False, reason="", chosen="fp32")
    with tempfile.TemporaryDirectory(prefix="edgequant-selective-") as tmp:
        work = Path(tmp)
        full = work / "int8_full.onnx"
        base = quantize_static_optimized(model_in, full, calibration_reader_factory(), **opts)
        summary.base = base.to_dict()
        summary.warnings += base.warnings
        qmodel = onnx.load(str(full))
        fp32_model = onnx.load(str(model_in))
        plan = analyse(qmodel, optimized_graph(full, "extended"))
        fp32_prof, int8_prof = prof(model_in), prof(full)
        numel = _numel(fp32_model)
        numel.update({k: v for k, v in _numel(qmodel).items() if k not in numel})
        cm = CostModel.fit(plan, fp32_prof, int8_prof, numel, profile_aliases(fp32_model) | profile_aliases(qmodel))
        summary.boundary_us_per_element = cm.boundary_us_per_element
        summary.boundary_us_fixed = cm.boundary_us_fixed
        summary.profile_totals_ms = {"fp32": sum(fp32_prof.values()) / 1e3, "int8_full": sum(int8_prof.values()) / 1e3}

        best_f, best_cost = search_float_nodes(cm)
        island_moves = [set(i) for i in plan.islands()]
        isl_f = set().union(*[i for i in island_moves if cm.cost(i) < cm.cost(set())]) if island_moves else set()
        if sandwiched(plan, isl_f):
            isl_f = set()
        specs: dict[str, set[str]] = {"int8_full": set()}
        for name, f in (("selective", best_f), ("selective_islands", isl_f)):
            if f and f != set(plan.units) and all(f != g for g in specs.values()):
                specs[name] = f
        paths: dict[str, Path] = {"fp32": model_in, "int8_full": full}
        cand_info: dict[str, dict[str, Any]] = {}
        for name, f in specs.items():
            info: dict[str, Any] = {"name": name, "float_nodes": sorted(f), "estimated_ms": cm.cost(f) / 1e3}
            if name != "int8_full":
                p = work / f"{name}.onnx"
                onnx.save(apply_float_nodes(qmodel, f, fp32_model, units=plan.units), str(p))
                leaked = _leaked(p, f)
                if leaked:
                    info["warning"] = f"ORT re-quantized {len(leaked)} intended float node(s): {', '.join(leaked[:5])}"
                    summary.warnings.append(f"{name}: {info['warning']}")
                paths[name] = p
            cand_info[name] = info
        cand_info["fp32"] = {"name": "fp32", "float_nodes": sorted(plan.units), "estimated_ms": cm.cost(set(plan.units)) / 1e3}

        remaining = time_budget_s - (time.perf_counter() - t_start)
        n_rounds = _rounds(rounds, 0.6 * remaining, fp32_prof, len(paths))
        timing = (timer or interleaved_timer(feeds, session_config, rounds=n_rounds))(paths)
        for name, t in timing.items():
            cand_info[name].update(t)
        summary.candidates = [cand_info[n] for n in paths]
        ok = [n for n in paths if n != "fp32" and timing[n]["speedup"] >= min_speedup and timing[n]["ci95_low"] > 1.0]
        summary.node_table = [{"node": u, "op_type": plan.op_type.get(u, "?"), "fp32_us": cm.fp32_us[u],
                               "int8_us": cm.int8_us[u], "float_in_selective": u in best_f} for u in plan.units]
        if ok:
            win = max(ok, key=lambda n: timing[n]["speedup"])
            # winner's curse: the best of several noisy candidates is flattered; confirm it alone vs FP32
            remaining = time_budget_s - (time.perf_counter() - t_start)
            confirm = (timer or interleaved_timer(feeds, session_config,
                                                  rounds=_rounds(rounds, remaining, fp32_prof, 2)))(
                {"fp32": model_in, win: paths[win]})[win]
            cand_info[win]["confirmation"] = confirm
            if not (confirm["speedup"] >= min_speedup and confirm["ci95_low"] > 1.0):
                ok = []
                summary.warnings.append(f"{win} was not confirmed in a second A/B run: {confirm['speedup']:.2f}x "
                                        f"[{confirm['ci95_low']:.2f}-{confirm['ci95_high']:.2f}]")
        if ok:
            f = specs[win]
            summary.found, summary.chosen = True, win
            summary.float_nodes, summary.int8_nodes = sorted(f), sorted(set(plan.units) - f)
            summary.reason = (f"{win}: {timing[win]['speedup']:.2f}x FP32 [{timing[win]['ci95_low']:.2f}-"
                              f"{timing[win]['ci95_high']:.2f}], {len(plan.units) - len(f)}/{len(plan.units)} nodes INT8")
            model_out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = model_out.with_name(model_out.name + ".tmp")
            shutil.copyfile(paths[win], tmp_out)
            os.replace(tmp_out, model_out)
            summary.model_out = str(model_out)
        else:
            summary.reason = _why_not(cm, timing, best_cost)
    summary.elapsed_s = time.perf_counter() - t_start
    return summary


def _rounds(rounds: int | None, remaining_s: float, fp32_prof: Mapping[str, float], n_models: int) -> int:
    """``rounds`` if given, else as many as fit in ``remaining_s`` (30..400)."""
    if rounds is not None:
        return rounds
    per_round_s = max(sum(fp32_prof.values()) / 1e6, 1e-4) * n_models * 1.5
    return int(max(30, min(400, remaining_s / per_round_s if remaining_s > 0 else 30)))


def _leaked(path: Path, float_nodes: set[str]) -> list[str]:
    """Intended float nodes that ORT's EXTENDED graph turned into integer kernels anyway."""
    opt = optimized_graph(path, "extended")
    idx = GraphIndex.build(opt.graph)
    by_name = {n.name: n for n in opt.graph.node}
    out = []
    for name in sorted(float_nodes):
        n = by_name.get(name)
        if n is None or n.op_type.startswith("QLinear") or n.op_type in {"QGemm", "QAttention"} or any((p := idx.producer.get(i)) is not None and p.op_type == "QuantizeLinear" for i in n.input):
            out.append(name)
    return out


def _why_not(cm: CostModel, timing: Mapping[str, Mapping[str, float]], best_cost: float) -> str:
    units = cm.plan.units
    gain = sum(cm.fp32_us[u] - cm.int8_us[u] for u in units)
    slower = [u for u in units if cm.int8_us[u] >= cm.fp32_us[u]]
    best = max((n for n in timing if n != "fp32"), key=lambda n: timing[n]["speedup"], default=None)
    measured = f"; best measured {best} {timing[best]['speedup']:.2f}x" if best else ""
    return (f"no faster INT8 model found: INT8 kernels save {gain / 1e3:.2f} ms/run over FP32 in total "
            f"({len(slower)}/{len(units)} nodes are slower in INT8), while each float/INT8 boundary costs "
            f"{cm.boundary_us_fixed:.1f} us + {cm.boundary_us_per_element * 1e3:.2f} ns/element; estimated best mix {best_cost / 1e3:.2f} ms vs FP32 "
            f"{cm.cost(set(units)) / 1e3:.2f} ms{measured}")


# --------------------------------------------------------------------------- FP32 rewrite
