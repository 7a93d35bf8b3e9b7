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
import threading
import time
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
    started = time.time()
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
        result["ran"] = [started, time.time()]      # wall clock on its node: when it held a slot
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


POLL_S = 0.2     # how often a batch waiting for a slot looks again (another batch holds them)


def ray_quantize_batch(address: str = "auto", *, max_concurrency: int = 2,
                       max_retries: int = 2) -> Callable[[Sequence[QuantizeJob], int], list[dict]]:
    """A drop-in for :func:`edgequant.jobs.quantize_batch` that quantizes on the Ray cluster.

    ``max_concurrency`` bounds the tasks of every batch together: tune may start a batch while
    another still runs (the next stage's recipes, as soon as they are known), and the two share
    these slots instead of each taking ``max_concurrency``."""

    shipped_probes: dict[int, list] = {}    # the search hands the same probe to every batch: put it once
    slots = threading.BoundedSemaphore(max(1, max_concurrency))

    def quantize_batch(jobs: Sequence[QuantizeJob], workers: int, *, timeout_s: float | None = None,
                       probe=None) -> list[dict]:
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

        def drop(refs) -> None:      # stop tasks and give their slots back
            for ref in list(refs):
                ray.cancel(ref, force=True)
                pending.pop(ref, None)
                slots.release()

        try:
            while queue or pending:
                if end is not None and time.monotonic() >= end:   # time budget out: stop what runs, skip the rest
                    for i in [*pending.values(), *(i for i, _job in queue)]:
                        results[i] = timed_out(timeout_s or 0.0)
                    drop(pending)
                    break
                while queue and len(pending) < limit and slots.acquire(blocking=False):
                    i, job = queue.pop(0)
                    calib = _ship_calib(shipper, job.calib)
                    pending[task.remote(job, shipper.ship(job.model_path), calib, probe_ref)] = i
                if not pending:      # another batch holds every slot: wait for one
                    time.sleep(POLL_S)
                    continue
                left = None if end is None else max(0.0, end - time.monotonic())
                wait_s = POLL_S if queue else left       # with jobs waiting, look for freed slots too
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
                if not ready:
                    continue
                (ref,) = ready
                i = pending.pop(ref)
                slots.release()
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
            drop(pending)
            raise
        return [r or {"ok": False, "error": "not run"} for r in results]

    quantize_batch.measures_quality = True   # tune.trials hands it a QualityProbe
    quantize_batch.shares_slots = True       # concurrent batches share max_concurrency (tune.trials)
    return quantize_batch


def _ship_calib(shipper: Shipper, calib: CalibSpec) -> Shipped | None:
    if not calib.spec or calib.spec.startswith("random:"):
        return None
    return shipper.ship(calib.spec)
