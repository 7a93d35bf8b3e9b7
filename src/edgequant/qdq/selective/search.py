"""The selective INT8 job: quantize, profile, estimate, build candidates, A/B-time, decide.

Every measurement goes through a :class:`edgequant.devices.Device`: per-node profiles from
``device.profile_nodes`` and the candidates' timing from one ``device.time_interleaved`` run
(every model once per round, one process, paired bootstrap interval against FP32), judged by the
one acceptance rule, :meth:`edgequant.measure.latency.Speedup.accepts`. Which nodes ORT fuses is
read from the CPU provider's EXTENDED-level optimized graph (the Q/DQ selectors are ORT's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgequant.measure.latency import ModelTiming
from edgequant.qdq.graph import GraphIndex
from edgequant.qdq.selective.cost import CostModel, profile_aliases, search_float_nodes
from edgequant.qdq.selective.plan import analyse, element_counts, sandwiched
from edgequant.qdq.selective.rewrite import apply_float_nodes

if TYPE_CHECKING:
    from edgequant.devices.base import Device

#: ``profiler(model_path) -> {node_name: kernel microseconds per run}``.
Profiler = Callable[[Path], dict[str, float]]
#: ``timer({name: path}, rounds) -> {name: ModelTiming}``, the models timed interleaved; each
#: ``ModelTiming.speedup`` is relative to the first entry (the FP32 reference).
Timer = Callable[[dict[str, Path], int], Mapping[str, ModelTiming]]

#: Untimed runs per model before an interleaved timing (the first runs allocate and page in).
TIMING_WARMUP = 5


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
    candidates: list[dict[str, Any]] = field(default_factory=list)   # JSON: median_ms, speedup, ci95_*
    node_table: list[dict[str, Any]] = field(default_factory=list)   # per unit: fp32/int8 us, decision
    boundary_us_per_element: float = 0.0
    boundary_us_fixed: float = 0.0
    profile_totals_ms: dict[str, float] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timing_entry(t: ModelTiming, rounds: int) -> dict[str, Any]:
    """A candidate's timing as the report's JSON fields."""
    return {"median_ms": t.stats.p50, "speedup": t.speedup.ratio, "ci95_low": t.speedup.ci_low,
            "ci95_high": t.speedup.ci_high, "rounds": rounds}


def device_timer(device: Device, feeds: Mapping[str, np.ndarray], *, warmup: int = TIMING_WARMUP,
                 seed: int = 0) -> Timer:
    """The :data:`Timer` of ``device``: one ``time_interleaved`` job per call."""
    def timer(paths: dict[str, Path], rounds: int) -> dict[str, ModelTiming]:
        result = device.time_interleaved(list(paths.values()), feeds, warmup=warmup, runs=rounds, seed=seed)
        return dict(zip(paths, result.models))
    return timer


def _extended_graph(path: str | Path) -> onnx.ModelProto:
    """ORT CPU's EXTENDED-level graph: the QDQ fusions done, original node names kept."""
    from edgequant.devices import local_cpu

    return local_cpu().optimized_graph(path, "extended")


def quantize_selective(
    model_in: str | Path,
    model_out: str | Path,
    calibration_reader_factory: Callable[[], Any],
    *,
    feeds: Mapping[str, np.ndarray],
    base_options: dict[str, Any] | None = None,
    device: Device | None = None,
    time_budget_s: float = 120.0,
    rounds: int | None = None,
    profile_runs: int | None = None,
    min_speedup: float = 1.02,
    profiler: Profiler | None = None,
    timer: Timer | None = None,
) -> SelectiveSummary:
    """Write the fastest INT8/FP32 mix of ``model_in`` that beats FP32, or report why none does.

    ``calibration_reader_factory()`` returns a fresh CalibrationDataReader; ``base_options`` are
    :func:`quantize_static_optimized` keyword arguments (default ``reduce_range=True``; e.g.
    ``activations_to_uint8``, ``target``); ``feeds`` is one input sample for profiling and timing;
    ``device`` profiles and times (default: this machine's CPU, 1 intra-op thread). The model is
    written only when a candidate's speedup over FP32 passes :meth:`Speedup.accepts`
    (``min_speedup``, interval above 1) in the candidates' A/B run *and* in a second A/B run of
    the winner alone against FP32 (the best of several noisy candidates is flattered).
    ``rounds`` defaults to what fits the time budget; ``profiler``/``timer`` replace the device
    measurements (tests).
    """
    from edgequant.qdq.recipe import quantize_static_optimized

    if device is None:
        from edgequant.devices import local_cpu
        from edgequant.measure.session import SessionConfig

        device = local_cpu(SessionConfig(intra_op_threads=1))
    t_start = time.perf_counter()
    model_in, model_out = Path(model_in), Path(model_out)
    opts = {"reduce_range": True, "device": device, **(base_options or {})}
    prof = profiler or (lambda p: device.profile_nodes(p, feeds, runs=profile_runs))
    time_models = timer or device_timer(device, feeds)
    summary = SelectiveSummary(model_in=str(model_in), model_out=None, found=False, reason="", chosen="fp32")
    with tempfile.TemporaryDirectory(prefix="edgequant-selective-") as tmp:
        work = Path(tmp)
        full = work / "int8_full.onnx"
        base = quantize_static_optimized(model_in, full, calibration_reader_factory(), **opts)
        summary.base = base.to_dict()
        summary.warnings += base.warnings
        qmodel = onnx.load(str(full))
        fp32_model = onnx.load(str(model_in))
        plan = analyse(qmodel, _extended_graph(full))
        fp32_prof, int8_prof = prof(model_in), prof(full)
        numel = element_counts(fp32_model)
        numel.update({k: v for k, v in element_counts(qmodel).items() if k not in numel})
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
        timing = time_models(paths, n_rounds)
        for name, t in timing.items():
            cand_info[name].update(timing_entry(t, n_rounds))
        summary.candidates = [cand_info[n] for n in paths]
        ok = [n for n in paths if n != "fp32" and timing[n].speedup.accepts(min_speedup)]
        summary.node_table = [{"node": u, "op_type": plan.op_type.get(u, "?"), "fp32_us": cm.fp32_us[u],
                               "int8_us": cm.int8_us[u], "float_in_selective": u in best_f} for u in plan.units]
        if ok:
            win = max(ok, key=lambda n: timing[n].speedup.ratio)
            # winner's curse: the best of several noisy candidates is flattered; confirm it alone vs FP32
            remaining = time_budget_s - (time.perf_counter() - t_start)
            confirm_rounds = _rounds(rounds, remaining, fp32_prof, 2)
            confirm = time_models({"fp32": model_in, win: paths[win]}, confirm_rounds)[win]
            cand_info[win]["confirmation"] = timing_entry(confirm, confirm_rounds)
            if not confirm.speedup.accepts(min_speedup):
                ok = []
                sp = confirm.speedup
                summary.warnings.append(f"{win} was not confirmed in a second A/B run: {sp.ratio:.2f}x "
                                        f"[{sp.ci_low:.2f}-{sp.ci_high:.2f}]")
        if ok:
            f = specs[win]
            sp = timing[win].speedup
            summary.found, summary.chosen = True, win
            summary.float_nodes, summary.int8_nodes = sorted(f), sorted(set(plan.units) - f)
            summary.reason = (f"{win}: {sp.ratio:.2f}x FP32 [{sp.ci_low:.2f}-{sp.ci_high:.2f}], "
                              f"{len(plan.units) - len(f)}/{len(plan.units)} nodes INT8")
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
    opt = _extended_graph(path)
    idx = GraphIndex.build(opt.graph)
    by_name = {n.name: n for n in opt.graph.node}
    out = []
    for name in sorted(float_nodes):
        n = by_name.get(name)
        if (n is None or n.op_type.startswith("QLinear") or n.op_type in {"QGemm", "QAttention"}
                or any((p := idx.producer.get(i)) is not None and p.op_type == "QuantizeLinear" for i in n.input)):
            out.append(name)
    return out


def _why_not(cm: CostModel, timing: Mapping[str, ModelTiming], best_cost: float) -> str:
    units = cm.plan.units
    gain = sum(cm.fp32_us[u] - cm.int8_us[u] for u in units)
    slower = [u for u in units if cm.int8_us[u] >= cm.fp32_us[u]]
    best = max((n for n in timing if n != "fp32"), key=lambda n: timing[n].speedup.ratio, default=None)
    measured = f"; best measured {best} {timing[best].speedup.ratio:.2f}x" if best else ""
    return (f"no faster INT8 model found: INT8 kernels save {gain / 1e3:.2f} ms/run over FP32 in total "
            f"({len(slower)}/{len(units)} nodes are slower in INT8), while each float/INT8 boundary costs "
            f"{cm.boundary_us_fixed:.1f} us + {cm.boundary_us_per_element * 1e3:.2f} ns/element; "
            f"estimated best mix {best_cost / 1e3:.2f} ms vs FP32 {cm.cost(set(units)) / 1e3:.2f} ms{measured}")
