"""The local CPU device: onnxruntime's CPU execution provider on this machine.

The only place (with its memory probe child) where a model is loaded and run. Latency is real
here, so ``can_time`` is true; the machine facts come from ``targets.detect_cpu``.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import EdgequantError
from ..measure.coverage import Coverage, coverage_of_graph
from ..measure.feeds import resolve_feeds, session_inputs
from ..measure.latency import MAX_ROUNDS, BenchResult, bench_result, check_run_counts, round_order, time_burst
from ..measure.memory import MemoryResult
from ..measure.profile import node_times, op_type_times
from ..measure.session import STOP_SPINNING_BETWEEN_RUNS, SessionConfig, session_options
from . import cpu_memory
from .base import Device, DeviceFacts, Feeds
from .cpu_session import inference_error, iter_session_outputs, open_session

#: Graph optimization levels for :meth:`CpuDevice.optimized_graph`.
_OPT_LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
               "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
               "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def _taking_turns(cfg: SessionConfig) -> SessionConfig:
    """``cfg`` for a session timed in turns with others: its workers park when a run returns."""
    if STOP_SPINNING_BETWEEN_RUNS in cfg.config_entries:
        return cfg
    return cfg.with_(config_entries={**cfg.config_entries, STOP_SPINNING_BETWEEN_RUNS: "1"})


class CpuDevice(Device):
    """onnxruntime's CPU EP in this process (memory: in a fresh child process)."""

    name = "cpu"
    kind = "cpu"

    def __init__(self, session: SessionConfig | None = None) -> None:
        self.session = session or SessionConfig()

    def __repr__(self) -> str:
        return f"CpuDevice({self.session!r})"

    def facts(self) -> DeviceFacts:
        from ..targets import detect_cpu

        cpu = detect_cpu()
        return DeviceFacts(self.name, self.kind, True,
                           f"onnxruntime {ort.__version__} CPU EP on {cpu.model} ({' '.join(cpu.isa) or cpu.arch})",
                           can_time=True)

    def with_session(self, session: SessionConfig) -> CpuDevice:
        return CpuDevice(session)

    def open(self, model_path: str | Path, session: SessionConfig | None = None, *,
             profile_prefix: str | None = None) -> ort.InferenceSession:
        """A loaded model for in-process applications that run one frame at a time (DMS demo,
        benchmark scripts); ``profile_prefix`` turns on ORT's profiler trace there."""
        cfg = session or self.session
        so = session_options(cfg)
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return open_session(model_path, cfg, options=so)

    # ---- outputs ----------------------------------------------------------------------------

    def iter_outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any],
                     outputs: Sequence[Sequence[str]] | None = None,
                     ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
        paths = [str(p) for p in model_paths]
        return iter_session_outputs([open_session(p, self.session) for p in paths], paths, samples, outputs)

    # ---- timing -----------------------------------------------------------------------------

    def time_interleaved(self, model_paths: Sequence[str | Path], feeds: Any, *, warmup: int = 10,
                         runs: int = 100, seed: int = 0, confidence: float = 0.95, resamples: int = 1000,
                         sessions: Sequence[SessionConfig] | None = None, min_seconds: float = 0.0,
                         burst: int = 1) -> BenchResult:
        """All sessions are created (and their feeds checked) before any timing; each model then
        gets ``warmup`` untimed runs. With more than one model, workers stop spinning when a run
        returns (``STOP_SPINNING_BETWEEN_RUNS``), so no session's idle workers slow the next one.
        ``time.perf_counter_ns`` brackets ``session.run`` only, and the garbage collector is paused
        while timing so a collection cannot land inside a run."""
        if not model_paths:
            raise EdgequantError("no models to benchmark")
        check_run_counts(warmup, runs, burst)
        paths = [str(p) for p in model_paths]
        configs = list(sessions) if sessions is not None else [self.session] * len(paths)
        if len(configs) != len(paths):
            raise EdgequantError(f"got {len(configs)} session settings for {len(paths)} models")
        turns = [_taking_turns(c) for c in configs] if len(paths) > 1 else configs
        loaded = [open_session(p, c) for p, c in zip(paths, turns)]
        feed_list = resolve_feeds(feeds, paths, [session_inputs(s) for s in loaded])

        n = len(loaded)
        start = time.perf_counter()
        for i, (sess, f) in enumerate(zip(loaded, feed_list)):
            try:
                for _ in range(max(warmup, 1)):  # at least one: surface run-time errors before timing
                    sess.run(None, f)
            except Exception as exc:  # noqa: BLE001 - ORT raises many types
                raise inference_error(paths[i], exc) from None

        # rounds until both ``runs`` are done and the timed runs fill ``min_seconds`` (a rule on
        # elapsed time only, never on the values, so stopping cannot bias the ratio)
        most = max(runs, MAX_ROUNDS) if min_seconds > 0 else runs
        times = np.zeros((n, most), dtype=np.int64)
        timed_ns, wanted_ns = 0, int(min_seconds * 1e9)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        clock = time.perf_counter_ns
        done = 0
        try:
            while done < most and (done < runs or timed_ns < wanted_ns):
                for i in round_order(n, done, seed):
                    times[i, done] = time_burst(loaded[i], feed_list[i], burst, clock)
                timed_ns += int(times[:, done].sum())
                done += 1
        finally:
            if gc_was_enabled:
                gc.enable()
        times, runs = times[:, :done], done
        return bench_result(paths, times / 1e6, configs[0], warmup=warmup, runs=runs,
                            wall_s=time.perf_counter() - start, confidence=confidence,
                            resamples=resamples, seed=seed, burst=burst)

    # ---- profiles ---------------------------------------------------------------------------

    def _profile_events(self, model_path: str | Path, feeds: Feeds, warmup: int, runs: int | None,
                        seconds: float) -> tuple[list[dict], int]:
        """ORT profiler events of ``warmup`` + ``runs`` runs (``runs=None``: about ``seconds``)."""
        with tempfile.TemporaryDirectory(prefix="edgequant-prof-") as tmp:
            so = session_options(self.session)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "profile")
            sess = open_session(model_path, self.session, options=so)
            t0 = time.perf_counter()
            for _ in range(warmup):
                sess.run(None, dict(feeds))
            if runs is None:
                per_run = (time.perf_counter() - t0) / max(warmup, 1)
                runs = int(min(300, max(30, seconds / max(per_run, 1e-6))))
            for _ in range(runs):
                sess.run(None, dict(feeds))
            events = json.loads(Path(sess.end_profiling()).read_text())
        return events, runs

    def profile_ops(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 5,
                    runs: int = 20) -> dict[str, float]:
        events, runs = self._profile_events(model_path, feeds, warmup, runs, 0.0)
        return op_type_times(events, warmup + runs)

    def profile_nodes(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 5,
                      runs: int | None = None, seconds: float = 3.0) -> dict[str, float]:
        events, runs = self._profile_events(model_path, feeds, warmup, runs, seconds)
        return node_times(events, warmup, runs)

    # ---- memory -----------------------------------------------------------------------------

    def baseline_memory(self) -> float:
        return cpu_memory.baseline_rss_mb()

    def peak_memory(self, model_path: str | Path, feeds: Feeds, *, warmup: int = 3, runs: int = 10,
                    baseline_mb: float | None = None) -> MemoryResult:
        return cpu_memory.measure_memory(model_path, feeds, self.session, warmup=warmup, runs=runs,
                                         baseline_mb=baseline_mb)

    def peak_memories(self, model_paths: Sequence[str | Path], feeds: Feeds, *, warmup: int = 3, runs: int = 10,
                      baseline_mb: float | None = None) -> list[MemoryResult]:
        """Each model's probe process, as many at once as this process has CPUs and the machine has
        memory for: peak RSS is per process, so probes side by side measure what one alone would."""
        from concurrent.futures import ThreadPoolExecutor

        base = self.baseline_memory() if baseline_mb is None else baseline_mb
        slots = cpu_memory.probe_slots(model_paths)
        if slots <= 1:
            return super().peak_memories(model_paths, feeds, warmup=warmup, runs=runs, baseline_mb=base)
        with ThreadPoolExecutor(max_workers=slots) as pool:
            return list(pool.map(lambda p: self.peak_memory(p, feeds, warmup=warmup, runs=runs, baseline_mb=base),
                                 model_paths))

    # ---- graph facts ------------------------------------------------------------------------

    def optimized_graph(self, model_path: str | Path, level: str = "all",
                        save_to: str | Path | None = None) -> onnx.ModelProto:
        """The graph ORT's CPU provider would execute at ``level`` (basic | extended | all).

        "all" adds the x86 NCHWc/NHWC layout passes, which is what a default session runs.
        """
        with tempfile.TemporaryDirectory(prefix="edgequant-opt-") as tmp:
            out = Path(save_to) if save_to else Path(tmp) / "optimized.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = _OPT_LEVELS[level]
            so.optimized_model_filepath = os.fspath(out)
            so.log_severity_level = 4
            open_session(model_path, SessionConfig(), options=so)
            return onnx.load(os.fspath(out), load_external_data=False)

    def coverage(self, model_path: str | Path, level: str = "extended") -> Coverage:
        """INT8 coverage after ORT's CPU graph optimization.

        The QDQ fusions run at the EXTENDED level; ALL only adds layout passes (NCHWc/NHWC) that
        don't change which ops are integer but rename float nodes, so EXTENDED keeps the
        original node names in ``float_compute_nodes``.
        """
        return coverage_of_graph(self.optimized_graph(model_path, level))


def local_cpu(session: SessionConfig | None = None) -> CpuDevice:
    """This machine's CPU device (graph facts such as coverage do not depend on the session)."""
    return CpuDevice(session)


def analysis_cpu(session: SessionConfig | None = None) -> CpuDevice:
    """This machine's CPU for statistics passes (ranges, histograms, algorithms, sensitivity), which
    are never timed: no memory arena, and nodes run in priority order. Their graphs hang reductions
    or outputs on many tensors; in the default order onnxruntime keeps activations alive far longer
    (a 10 MB text recognizer's per-tensor min/max graph: +378 MB during a run, ~0 in priority order)."""
    return CpuDevice((session or SessionConfig()).with_(enable_mem_arena=False, execution_order="priority"))
