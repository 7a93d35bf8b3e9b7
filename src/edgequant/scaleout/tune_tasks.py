"""Tune's trials as Ray tasks: the ``quantize_batch`` that ``tune --ray`` plugs in.

Each task quantizes one candidate (calibration included) and, given the search's quality probe
(the FP32 reference and the evaluation samples, shipped once per batch), measures its quality on
the evaluation data where it runs. The search itself and every timing stay in the driver (timing
must be interleaved in one process). Model and calibration files travel once by content hash;
each task returns the quantized model's bytes, written by the driver into tune's cache, so a
re-run resumes from the cache whatever node ran a trial. At most ``max_concurrency`` at a time.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..devices._ray import Shipped, Shipper, connect, materialize, use_assigned_cpus
from ..fsutil import atomic_path
from ..jobs import CalibSpec, QuantizeJob, run_quantize_job, timed_out


def _quantize_remote(job: QuantizeJob, model: Shipped, calib: Shipped | None, probe: list) -> dict:
    """``probe``: [] or [ObjectRef of a tune.trials.QualityProbe], in a list so that Ray hands the
    reference over unresolved: a probe this worker cannot load costs its quality, not its trial."""
    import ray

    use_assigned_cpus(ray)
    work = Path(tempfile.mkdtemp(prefix="edgequant-tune-"))
    try:
        spec = job.calib
        if calib is not None:
            spec = dataclasses.replace(spec, spec=str(materialize(calib, ray)))
        here = dataclasses.replace(job, model_path=materialize(model, ray), out_path=work / job.out_path.name,
                                   calib=spec)
        result = run_quantize_job(here)
        result["quantized_on"] = ray.get_runtime_context().get_node_id()
        if result["ok"]:
            result["model_bytes"] = here.out_path.read_bytes()
            quality = _quality(ray, probe, here.out_path) if probe else None
            if quality is not None:
                result["quality"] = quality
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quality(ray, probe: list, path: Path) -> dict | None:
    """The candidate's quality by the probe, or None to leave it to the driver (a probe this worker
    cannot load, e.g. a metric module only the driver imports; a measurement that crashed)."""
    try:
        return ray.get(probe[0]).measure(path)
    except Exception:  # noqa: BLE001 - the driver measures it again and says why
        return None


def ray_quantize_batch(address: str = "auto", *, max_concurrency: int = 2,
                       max_retries: int = 2) -> Callable[[Sequence[QuantizeJob], int], list[dict]]:
    """A drop-in for :func:`edgequant.jobs.quantize_batch` that quantizes on the Ray cluster."""

    shipped_probes: dict[int, list] = {}    # the search hands the same probe to every batch: put it once

    def quantize_batch(jobs: Sequence[QuantizeJob], workers: int, *, timeout_s: float | None = None,
                       probe=None) -> list[dict]:
        import time

        ray = connect(address)
        end = None if timeout_s is None else time.monotonic() + timeout_s
        task = ray.remote(_quantize_remote).options(num_cpus=1, max_retries=max_retries, retry_exceptions=False)
        shipper = Shipper(ray)
        if probe is not None and id(probe) not in shipped_probes:
            shipped_probes.clear()
            shipped_probes[id(probe)] = [ray.put(probe), probe]    # the probe kept: its id stays its own
        probe_ref = shipped_probes[id(probe)][:1] if probe is not None else []
        limit = max(1, min(max_concurrency, workers))
        results: list[dict | None] = [None] * len(jobs)
        pending: dict = {}
        queue = list(enumerate(jobs))
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    i, job = queue.pop(0)
                    calib = _ship_calib(shipper, job.calib)
                    pending[task.remote(job, shipper.ship(job.model_path), calib, probe_ref)] = i
                left = None if end is None else max(0.0, end - time.monotonic())
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
                if not ready:          # the time budget ran out: stop what runs, skip what waits
                    for ref, i in pending.items():
                        ray.cancel(ref, force=True)
                        results[i] = timed_out(timeout_s or 0.0)
                    for i, _job in queue:
                        results[i] = timed_out(timeout_s or 0.0)
                    break
                (ref,) = ready
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - node lost after retries
                    res = {"ok": False, "error": f"on the Ray cluster: {type(exc).__name__}: {str(exc)[:200]}"}
                data = res.pop("model_bytes", None)
                if data is not None:
                    with atomic_path(jobs[i].out_path) as tmp:
                        tmp.write_bytes(data)
                results[i] = res
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [r or {"ok": False, "error": "not run"} for r in results]

    quantize_batch.measures_quality = True   # tune.trials hands it a QualityProbe
    return quantize_batch


def _ship_calib(shipper: Shipper, calib: CalibSpec) -> Shipped | None:
    if not calib.spec or calib.spec.startswith("random:"):
        return None
    return shipper.ship(calib.spec)
