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

Timing goes through a device (``Device.time_interleaved`` with one session setting per entry of
the same model); a setting wins by the one acceptance rule, :meth:`Speedup.accepts`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..devices.base import Device
from ..measure.latency import ModelTiming, Speedup
from ..measure.session import STOP_SPINNING_BETWEEN_RUNS, SessionConfig

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
#:   running detector -> mesh -> iris; neutral at 1 thread. Parking the workers only between runs
#:   (``STOP_SPINNING_BETWEEN_RUNS``, 2026-12-04) beat spinning off in 14 of 16 FP32/INT8 cases at 2-8
#:   threads on a 2-vCPU EPYC and a 16-core Xeon (by up to 37%; INT8 at 2 threads on the Xeon went
#:   the other way by 7-11%), so ``pipeline`` uses that.
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
    several sessions run one after another on the same cores (e.g. a DMS frame) -> workers spin
    inside a run and park when it returns (``STOP_SPINNING_BETWEEN_RUNS``: faster than no
    spinning in 14 of 16 cases measured at 2-8 threads, ``benchmarks/FINDINGS.md``).
    Use as ``SessionConfig(**deployment_session_config("cnn-int8"))``.
    """
    if model_kind not in MEASURED_WINNERS:
        raise ValueError(f"unknown model kind {model_kind!r}; expected one of {', '.join(MEASURED_WINNERS)}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MEASURED_WINNERS[model_kind].items()}
    if shared_cores:
        out["intra_op_threads"] = 1
    if threads is not None:
        out["intra_op_threads"] = threads
    if shared_cores:
        out["allow_spinning"] = False
    elif pipeline:
        out["config_entries"] = {**out.get("config_entries", {}), STOP_SPINNING_BETWEEN_RUNS: "1"}
    return out


@dataclass
class SettingTiming:
    """One setting's latencies and its speedup over ``default`` at the lowest thread count."""

    name: str
    config: dict[str, Any]
    median_ms: float
    p90_ms: float
    speedup: Speedup

    def to_dict(self) -> dict[str, Any]:
        """session_tuning.json's timing entry (``speedup`` the ratio, ``ci95`` its interval)."""
        return {"name": self.name, "config": self.config, "median_ms": self.median_ms, "p90_ms": self.p90_ms,
                "speedup": self.speedup.ratio, "ci95": [self.speedup.ci_low, self.speedup.ci_high]}


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
                "timings": [t.to_dict() for t in self.timings]}


def _apply(base: SessionConfig, changes: Mapping[str, Any]) -> SessionConfig:
    ch = dict(changes)
    if "config_entries" in ch:
        ch["config_entries"] = {**base.config_entries, **ch["config_entries"]}
    return base.with_(**ch)


def _fastest(timings: Mapping[str, ModelTiming], ref: str, min_gain: float) -> str:
    """The accepted setting with the largest speedup over ``ref``, else ``ref``."""
    ok = [k for k, t in timings.items() if k != ref and t.speedup.accepts(min_gain)]
    return max(ok, key=lambda k: timings[k].speedup.ratio, default=ref)


def _scaled(sp: Speedup, factor: float) -> Speedup:
    return replace(sp, ratio=sp.ratio * factor, ci_low=sp.ci_low * factor, ci_high=sp.ci_high * factor)


def tune_session(model_path: str | Path, feeds: Mapping[str, np.ndarray], *,
                 candidates: Mapping[str, Mapping[str, Any]] | None = None,
                 threads: Sequence[int] = (1,), base: SessionConfig | None = None,
                 rounds: int = 60, warmup: int = 5, min_gain: float = 1.02, seed: int = 0,
                 device: Device | None = None) -> SessionTuning:
    """Time candidate settings of one model interleaved on ``device``; return the fastest.

    One interleaved group per thread count (settings vs ``default`` at that count), then, with
    several thread counts, one more group with ``default`` at each count and the best setting of
    each count, so thread counts are compared in the same rounds too. A setting wins only when it
    is ``min_gain`` faster than ``default`` with its 95% paired-bootstrap interval above 1
    (:meth:`Speedup.accepts`). Speedups in the result are relative to ``default`` at the lowest
    thread count. ``device`` defaults to this machine's CPU; ``base`` is the settings every
    candidate changes (default ``SessionConfig()``).
    """
    if device is None:
        from ..devices import local_cpu

        device = local_cpu()
    cands = {"default": {}, **dict(candidates or CANDIDATES)}
    base = base or SessionConfig()
    res = SessionTuning(model=str(model_path), rounds=rounds)
    configs: dict[str, SessionConfig] = {}

    def timed(names: list[str], group_seed: int) -> dict[str, ModelTiming]:
        """One interleaved job: the model once per setting; speedups vs ``names[0]``."""
        result = device.time_interleaved([model_path] * len(names), feeds, warmup=warmup, runs=rounds,
                                         seed=group_seed, sessions=[configs[k] for k in names])
        return dict(zip(names, result.models))

    group_best: list[str] = []
    all_timings: dict[str, ModelTiming] = {}
    for gi, t in enumerate(sorted(threads)):
        group = {f"{n}@{t}T": _apply(base.with_(intra_op_threads=t), ch) for n, ch in cands.items()}
        configs.update(group)
        timings = timed(list(group), seed + gi)   # "default@tT" first: the group's reference
        group_best.append(_fastest(timings, f"default@{t}T", min_gain))
        all_timings.update(timings)
    lowest = f"default@{min(threads)}T"
    # cross-thread ratios come from the final group; within-count ratios from their own group
    factor: dict[str, float] = {}
    if len(threads) > 1:
        rest = sorted((set(group_best) | {f"default@{t}T" for t in threads}) - {lowest})
        final = timed([lowest, *rest], seed + 99)
        best = _fastest(final, lowest, min_gain)
        for k, v in final.items():
            res.final[k] = {"median_ms": v.stats.p50, "speedup": v.speedup.ratio, "ci95_low": v.speedup.ci_low,
                            "ci95_high": v.speedup.ci_high}
        factor = {k: v.speedup.ratio for k, v in final.items()}   # default@tT relative to default@lowest
    else:
        best = group_best[0]
    for k, v in all_timings.items():
        samples = np.asarray(v.stats.samples_ms)
        own_default = f"default@{k.rsplit('@', 1)[1]}"
        res.timings.append(SettingTiming(k, configs[k].to_dict(), float(np.median(samples)),
                                         float(np.percentile(samples, 90)),
                                         _scaled(v.speedup, factor.get(own_default, 1.0))))
    res.best = best
    res.best_config = configs[best].to_dict()
    res.loadavg = os.getloadavg()
    return res
