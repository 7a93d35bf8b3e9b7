"""The picklable quantize job: what a worker process (or a remote Ray worker) needs to quantize.

A job carries paths and plain settings only (no open data sources, no sessions), so it crosses
process and machine boundaries; the worker re-opens the calibration data from :class:`CalibSpec`.
``run_quantize_job`` never raises for a recipe's failure: the search goes on and reports it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import model as model_io
from .errors import EdgequantError
from .measure.session import available_cpus, limit_cpus
from .quantize import QuantizeConfig, quantize_model
from .quiet import quiet_logging


@dataclass(frozen=True)
class CalibSpec:
    """How a worker process re-opens the calibration data (sources don't cross processes)."""

    spec: str
    limit: int | None
    preprocess: Any = None


@dataclass(frozen=True)
class QuantizeJob:
    model_path: Path
    out_path: Path
    config: QuantizeConfig
    calib: CalibSpec


def run_quantize_job(job: QuantizeJob) -> dict:
    """Quantize one recipe (runs in a worker process or inline); never raises for recipe errors."""
    from .data import open_source

    try:
        with quiet_logging():
            calib = None     # dynamic: only the timing of alternative graphs reads its first sample
            if job.config.mode == "static" or job.calib.spec:
                proto = model_io.load_model(job.model_path)
                calib = open_source(job.calib.spec, model_io.graph_inputs(proto), preprocess=job.calib.preprocess,
                                    limit=job.calib.limit)
            if job.out_path.exists():
                job.out_path.unlink()  # a stale partial entry (no quantize.json): redo it
            res = quantize_model(job.model_path, job.out_path, job.config, calib)
        return {"ok": True, "warnings": list(res.warnings), "notes": list(res.notes)}
    except EdgequantError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one recipe's crash must not end the search
        return {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the thread that started it ends. A quantizing worker
    (AdaRound: minutes of CPU) must not outlive a parent that was killed or stopped."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker_init(cpus: int) -> None:
    _die_with_parent()
    limit_cpus(cpus)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that holds onnxruntime thread pools can deadlock.
    # Each worker gets its share of the cores (measure.session.cpu_allowance): with onnxruntime's
    # default pool per session, two workers spin against each other on the same cores.
    share = max(1, available_cpus() // workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(share,))


def _end_workers(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor cannot cancel a running job: end its workers (CPython keeps them in
    # _processes; shutdown alone would wait for the jobs to finish)
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()


def _death(exitcode: int | None) -> str:
    """Why a job's worker process is gone, as far as its exit code tells."""
    if exitcode == -9:
        return ("its worker process was killed (SIGKILL: on Linux usually the out-of-memory killer; "
                "histogram calibration methods keep every calibration sample's activations, so lower "
                "--calib-limit or use minmax)")
    return f"its worker process died (exit code {exitcode})"


def _child(fn: Callable[[Any], dict], job: Any, conn: Any) -> None:
    _die_with_parent()
    conn.send(fn(job))
    conn.close()


def _isolated(job: Any, fn: Callable[[Any], dict]) -> dict:
    """One job alone in a fresh spawned process, so that a crash is pinned on this job only."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, job, send), daemon=True)
    proc.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the child ended without sending: it died
        result = None
    proc.join()
    return result if result is not None else {"ok": False, "error": _death(proc.exitcode)}


def timed_out(timeout_s: float) -> dict:
    """The result of a job stopped because the caller's time ran out."""
    return {"ok": False, "error": f"stopped: the time budget ran out while it was quantizing ({timeout_s:.0f} s)",
            "timed_out": True}


def quantize_batch(jobs: Sequence[QuantizeJob], workers: int,
                   fn: Callable[[Any], dict] = run_quantize_job, *, timeout_s: float | None = None) -> list[dict]:
    """Run jobs in up to ``workers`` (max 2) spawned processes, or inline for one job/worker.

    A worker that dies (the out-of-memory killer, a crash inside onnxruntime) breaks the whole
    pool: the jobs left without a result then run again one per fresh process, and the one whose
    process dies again fails alone with the reason; the other recipes' results stand.
    ``timeout_s``: jobs not finished by then are stopped (their processes ended) and fail with the
    reason; jobs then always run in worker processes, since an inline one could not be stopped."""
    workers = max(1, min(2, workers, len(jobs)))
    if workers == 1 and timeout_s is None:
        return [fn(j) for j in jobs]
    results: list[dict | None] = [None] * len(jobs)
    pool = _pool(workers)
    try:
        futures = [pool.submit(fn, j) for j in jobs]
        done, late = wait(futures, timeout=timeout_s)
        for i, fut in enumerate(futures):
            if fut in done and fut.exception() is None:
                results[i] = fut.result()
            elif fut in late:
                results[i] = timed_out(timeout_s or 0.0)
        if late:
            _end_workers(pool)
    except BrokenProcessPool:
        pass
    except BaseException:    # Ctrl-C, SIGTERM: no job may hold the exit for minutes, or outlive it
        _end_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r if r is not None else _isolated(j, fn) for r, j in zip(results, jobs)]
