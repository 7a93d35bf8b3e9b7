"""Session settings for deployment: measured winners, and a tuner that measures a model's own.

ORT's session options that can matter for an INT8 model on a CPU: intra-op threads, thread
spinning, the memory arena, the graph optimization level (ALL adds the NCHWc layout for FP32
convs and NHWC for QLinearConv; EXTENDED keeps NCHW), and config entries such as
``session.qdqisint8allowed`` (lets x86 fuse int8-activation QDQ groups), ``session.x64quantprecision``
(AVX2 S8->U8 weights), ``session.set_denormal_as_zero`` and ``session.intra_op.dynamic_block_base``.
:func:`tune_session` times candidate settings of one model interleaved in one process
(paired rounds, bootstrap interval) and keeps ORT's defaults unless a setting is faster outside
the noise. :func:`deployment_session_config` returns the settings that won in
``benchmarks/results/SESSION_TUNING.md`` on an AVX2 no-VNNI EPYC (2 cores).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgequant.measure.latency import paired_speedup
from edgequant.measure.session import SessionConfig, make_session

#: Candidate settings, as changes to a baseline SessionConfig (name -> SessionConfig fields).
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "no_spinning": {"allow_spinning": False},
    "no_arena": {"enable_mem_arena": False, "enable_mem_pattern": False},
    "extended": {"graph_optimization": "extended"},
    "qdq_int8_allowed": {"config_entries": {"session.qdqisint8allowed": "1"}},
    "x64quantprecision": {"config_entries": {"session.x64quantprecision": "1"}},
    "denormal_as_zero": {"config_entries": {"session.set_denormal_as_zero": "1"}},
    "dynamic_block_base_4": {"config_entries": {"session.intra_op.dynamic_block_base": "4"}},
    "gelu_approximation": {"config_entries": {"optimization.enable_gelu_approximation": "1"}},
}

#: What won in benchmarks/session_sweep.py on this machine class (results/SESSION_TUNING.md; AMD EPYC
#: AVX2 no VNNI, 2 cores, ORT 1.32): keys are model kinds, values SessionConfig fields layered on
#: ``SessionConfig()``.
#: * graph level ALL: EXTENDED (no NCHWc for FP32 convs, no NHWC QLinearConv) lost 17-50% on the CNNs
#:   (FP32 and INT8) and tied on the fused encoder.
#: * threads: all physical cores (ORT's default, 0) won on a quiet machine (2 vs 1: FP32 1.8-1.9x,
#:   INT8 1.25-1.55x); on a loaded box 2 threads lost to 1 (earlier sweep): pass ``shared_cores``.
#: * spinning off: 1.05-1.2x better at 2 threads whenever several sessions take turns on the same
#:   cores (their spinning workers steal the core from the next session), i.e. a DMS frame pipeline
#:   running detector -> mesh -> iris; neutral at 1 thread.
#: * no effect outside +-2% at 1 thread: arena off, denormal-as-zero, dynamic_block_base=4,
#:   x64quantprecision, qdqisint8allowed on u8-activation models. ``optimization.enable_gelu_approximation``
#:   +2% on the encoder but changes numerics: not a default. ``session.qdqisint8allowed=1`` made ORT's
#:   default S8S8 resnet18 5x slower on x86 (int8-activation kernels): never set it there.
MEASURED_WINNERS: dict[str, dict[str, Any]] = {
    "cnn-int8": {"graph_optimization": "all", "intra_op_threads": 0},
    "cnn-fp32": {"graph_optimization": "all", "intra_op_threads": 0},
    "transformer-int8": {"graph_optimization": "all", "intra_op_threads": 0},
    "transformer-fp32": {"graph_optimization": "all", "intra_op_threads": 0},
}


def deployment_session_config(model_kind: str = "cnn-int8", *, threads: int | None = None,
                              shared_cores: bool = False, pipeline: bool = False) -> dict[str, Any]:
    """SessionConfig fields to deploy a model of ``model_kind`` with (``cnn-int8``, ``cnn-fp32``,
    ``transformer-int8``, ``transformer-fp32``), from the measured winners above.

    ``threads`` overrides the thread count (default: ORT's, one per physical core);
    ``shared_cores``: other processes load the cores -> 1 thread, no spinning; ``pipeline``:
    several sessions run one after another on the same cores (e.g. a DMS frame) -> no spinning.
    Use as ``SessionConfig(**deployment_session_config("cnn-int8"))``.
    """
    if model_kind not in MEASURED_WINNERS:
        raise ValueError(f"unknown model kind {model_kind!r}; expected one of {', '.join(MEASURED_WINNERS)}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MEASURED_WINNERS[model_kind].items()}
    if shared_cores:
        out["intra_op_threads"] = 1
    if threads is not None:
        out["intra_op_threads"] = threads
    if shared_cores or pipeline:
        out["allow_spinning"] = False
    return out


@dataclass
class SettingTiming:
    name: str
    config: dict[str, Any]
    median_ms: float
    p90_ms: float
    speedup: float            # vs the baseline setting at the same thread count
    ci95: tuple[float, float]


@dataclass
class SessionTuning:
    """Result of :func:`tune_session`: every setting's timing and the chosen one."""

    model: str
    rounds: int
    timings: list[SettingTiming] = field(default_factory=list)
    best: str = "default"
    best_config: dict[str, Any] = field(default_factory=dict)
    loadavg: tuple[float, ...] = ()
    #: the cross-thread group: default at each count and each count's winner, same rounds
    final: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rounds": self.rounds, "best": self.best, "best_config": self.best_config,
                "loadavg": list(self.loadavg), "final": self.final,
                "timings": [t.__dict__ | {"ci95": list(t.ci95)} for t in self.timings]}


def _apply(base: SessionConfig, changes: Mapping[str, Any]) -> SessionConfig:
    ch = dict(changes)
    if "config_entries" in ch:
        ch["config_entries"] = {**base.config_entries, **ch["config_entries"]}
    return base.with_(**ch)


def _interleave(sessions: Mapping[str, Any], feeds: Mapping[str, np.ndarray], rounds: int, warmup: int,
                seed: int) -> dict[str, np.ndarray]:
    """Each session once per round in a fresh random order (a fixed rotation would always put the
    same session right after a spinning multi-thread one)."""
    names = list(sessions)
    for k in names:
        for _ in range(warmup):
            sessions[k].run(None, dict(feeds))
    rng = np.random.default_rng(seed)
    times = {k: np.zeros(rounds) for k in names}
    gc_on = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for i in rng.permutation(len(names)):
                k = names[i]
                t0 = time.perf_counter_ns()
                sessions[k].run(None, dict(feeds))
                times[k][r] = (time.perf_counter_ns() - t0) / 1e6
    finally:
        if gc_on:
            gc.enable()
    return times


def tune_session(model_path: str | Path, feeds: Mapping[str, np.ndarray], *,
                 candidates: Mapping[str, Mapping[str, Any]] | None = None,
                 threads: Sequence[int] = (1,), base: SessionConfig | None = None,
                 rounds: int = 60, warmup: int = 5, min_gain: float = 1.02, seed: int = 0) -> SessionTuning:
    """Time candidate settings of one model interleaved; return the fastest.

    One interleaved group per thread count (settings vs ``default`` at that count), then, with
    several thread counts, one more group with ``default`` at each count and the best setting of
    each count, so thread counts are compared in the same rounds too. A setting wins only when it
    is ``min_gain`` faster than ``default`` with its 95% paired-bootstrap interval above 1.
    Speedups in the result are relative to ``default`` at the lowest thread count.
    """
    import os

    cands = {"default": {}, **dict(candidates or CANDIDATES)}
    base = base or SessionConfig()
    res = SessionTuning(model=str(model_path), rounds=rounds)
    configs: dict[str, SessionConfig] = {}
    group_best: list[str] = []
    all_times: dict[str, np.ndarray] = {}
    for gi, t in enumerate(sorted(threads)):
        group = {f"{n}@{t}T": _apply(base.with_(intra_op_threads=t), ch) for n, ch in cands.items()}
        configs.update(group)
        sessions = {k: make_session(model_path, c) for k, c in group.items()}
        times = _interleave(sessions, feeds, rounds, warmup, seed + gi)
        del sessions
        ref = f"default@{t}T"
        best, best_sp = ref, 1.0
        for k, v in times.items():
            sp = paired_speedup(times[ref], v)
            if k != ref and sp.ratio >= min_gain and sp.ci_low > 1.0 and sp.ratio > best_sp:
                best, best_sp = k, sp.ratio
        group_best.append(best)
        all_times.update(times)
    lowest = f"default@{min(threads)}T"
    if len(threads) > 1:
        final = sorted(set(group_best) | {f"default@{t}T" for t in threads})
        sessions = {k: make_session(model_path, configs[k]) for k in final}
        times = _interleave(sessions, feeds, rounds, warmup, seed + 99)
        del sessions
        ref = times[lowest]
        best, best_sp = lowest, 1.0
        for k, v in times.items():
            sp = paired_speedup(ref, v)
            res.final[k] = {"median_ms": float(np.median(v)), "speedup": sp.ratio, "ci95_low": sp.ci_low,
                            "ci95_high": sp.ci_high}
            if k != lowest and sp.ratio >= min_gain and sp.ci_low > 1.0 and sp.ratio > best_sp:
                best, best_sp = k, sp.ratio
        # cross-thread ratios come from the final group; within-count ratios from their own group
        scale = {k: float(np.median(times[k]) / np.median(ref)) for k in times}
    else:
        best, scale = group_best[0], {}
    for k, v in all_times.items():
        t = k.rsplit("@", 1)[1]
        own_ref = all_times[f"default@{t}"]
        sp = paired_speedup(own_ref, v)
        factor = 1.0 / scale.get(f"default@{t}", 1.0)  # default@tT relative to default@lowest
        res.timings.append(SettingTiming(k, configs[k].to_dict(), float(np.median(v)), float(np.percentile(v, 90)),
                                         sp.ratio * factor, (sp.ci_low * factor, sp.ci_high * factor)))
    res.best = best
    res.best_config = configs[best].to_dict()
    res.loadavg = os.getloadavg()
    return res
