"""Cost model and search: which nodes to leave in float, estimated from two per-node profiles.

``cost(float_nodes) = constant + sum(INT8 or FP32 time of each unit) + boundary cost``, where
the boundary cost is a fixed part per standalone Q/DQ (kernel launch, layout Transpose) plus a
part per element crossing a float/INT8 boundary. Unit times come from the FP32 and full-INT8
profiles; the constant and the boundary cost are fitted so that the two end points (all INT8,
all FP32) reproduce the measured totals exactly. Profile names at the ALL level are the original
node names plus ``_nchwc`` / ``_token_N`` suffixes, or the output tensor's name after a layout
pass (:func:`profile_aliases`). The search is greedy hill climbing over *legal* float sets only
(never a sandwiched node, see :func:`edgequant.qdq.selective.plan.sandwiched`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from edgequant.qdq.graph import GraphIndex
from edgequant.qdq.selective.plan import QdqPlan, boundaries, sandwiched

_SUFFIX = re.compile(r"(_nchwc|_token_\d+|_nhwc)+$")


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
