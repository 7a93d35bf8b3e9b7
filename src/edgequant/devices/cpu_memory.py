"""The CPU device's memory job: peak RSS of a fresh child process per model.

The child (``_cpu_memprobe``) imports only numpy and onnxruntime, loads the model, warms it up
and runs it, then prints its peak RSS; a baseline child does the same imports and nothing else.
Inputs cross through an ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import EdgequantError
from ..measure.memory import MemoryResult
from ..measure.session import SessionConfig, available_cpus

_PROBE = "edgequant.devices._cpu_memprobe"
_TIMEOUT_S = 600.0


def _child_env() -> dict[str, str]:
    """The child must import this very package even when it is not installed (PYTHONPATH=src)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_probe(args: list[str], what: str) -> float:
    cmd = [sys.executable, "-m", _PROBE, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=_child_env())
    except subprocess.TimeoutExpired:
        raise EdgequantError(f"{what}: memory probe timed out after {_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise EdgequantError(f"{what}: memory probe failed: {last}")
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])
    except (ValueError, KeyError, IndexError):
        raise EdgequantError(f"{what}: memory probe printed no result") from None


def probe_slots(model_paths: Sequence[str | Path]) -> int:
    """How many memory probes may run at once: one per CPU this process may use, no more than the
    free memory holds (a probe peaks at a few times its model's size: 3.3x for a 2.3 GB model)."""
    import psutil

    from .. import model as model_io

    need = max(model_io.model_size_bytes(p) for p in model_paths) * 4 + 256 * 2**20
    by_memory = int(psutil.virtual_memory().available // need)
    return max(1, min(available_cpus(), len(model_paths), by_memory))


def _no_objects(arr: np.ndarray) -> np.ndarray:
    """Object (string) arrays would need pickle in an .npz; store them as unicode instead."""
    return arr.astype(str) if arr.dtype == object else arr


def baseline_rss_mb() -> float:
    """Peak RSS of a fresh interpreter that has imported numpy and onnxruntime, nothing else."""
    return _run_probe(["baseline"], "baseline")


def measure_memory(model_path: str | Path, feeds: Mapping[str, np.ndarray], cfg: SessionConfig | None = None,
                   *, warmup: int = 3, runs: int = 10, baseline_mb: float | None = None) -> MemoryResult:
    """Peak RSS of a fresh process that loads ``model_path``, warms up and runs it ``runs`` times.

    Pass ``baseline_mb`` (from :func:`baseline_rss_mb`) to reuse one baseline across models.
    """
    cfg = cfg or SessionConfig()
    p = Path(model_path)
    if not p.is_file():
        raise EdgequantError(f"{p}: no such file")
    base = baseline_rss_mb() if baseline_mb is None else float(baseline_mb)
    with tempfile.TemporaryDirectory(prefix="edgequant-mem-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **{k: _no_objects(np.asarray(v)) for k, v in feeds.items()})
        peak = _run_probe(["model", str(p.resolve()), str(npz), json.dumps(cfg.to_dict()),
                           str(int(warmup)), str(int(runs))], str(p))
    return MemoryResult(peak_rss_mb=peak, baseline_rss_mb=base, delta_mb=peak - base)
