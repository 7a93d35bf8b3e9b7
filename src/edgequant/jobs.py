"""The picklable quantize job: what a worker process (or a remote Ray worker) needs to quantize.

A job carries paths and plain settings only (no open data sources, no sessions), so it crosses
process and machine boundaries; the worker re-opens the calibration data from :class:`CalibSpec`.
``run_quantize_job`` never raises for a recipe's failure: the search goes on and reports it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import model as model_io
from .errors import EdgequantError
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
            calib = None
            if job.config.mode == "static":
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


def quantize_batch(jobs: Sequence[QuantizeJob], workers: int) -> list[dict]:
    """Run jobs in up to ``workers`` (max 2) spawned processes, or inline for one job/worker."""
    workers = max(1, min(2, workers, len(jobs)))
    if workers == 1:
        return [run_quantize_job(j) for j in jobs]
    # spawn, not fork: forking a process that holds onnxruntime thread pools can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_quantize_job, jobs))
