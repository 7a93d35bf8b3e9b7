"""Fleet models as Ray tasks: the executor the driver plugs into :func:`edgequant.fleet.run_fleet`.

Faults: a task whose worker or node dies is retried elsewhere (``max_retries``); when retries run
out that model alone is reported failed. Ctrl-C cancels every task still running and re-raises;
only finished models were written, each atomically with its fingerprint last.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..fleet import FleetEntry, FleetOutcome, failure, longest_first, run_entry
from ..fsutil import atomic_path
from ..devices._ray import Shipped, Shipper, connect, materialize, node_facts, use_assigned_cpus

_TEXT = (".json", ".html")


def _run_remote(entry: FleetEntry, files: dict[str, Shipped], driver_dir: str) -> dict:
    """On a worker: materialize the inputs, run the model, return its output files."""
    import ray

    use_assigned_cpus(ray)
    local = {key: str(materialize(item, ray)) for key, item in files.items()}
    here = dataclasses.replace(entry, model=Path(local["model"]), calib=local.get("calib", entry.calib),
                               eval=local.get("eval", entry.eval))
    facts = node_facts(ray)
    work = Path(tempfile.mkdtemp(prefix="edgequant-fleet-"))
    try:
        out = work / entry.name
        started = time.monotonic()
        try:
            run_entry(here, out)
        except Exception as exc:  # noqa: BLE001 - reported for this model only
            return {"error": failure(entry.name, exc).error, "executed_on": facts}
        elapsed = round(time.monotonic() - started, 2)
        (out / "report.json").write_text(json.dumps(json.loads((out / "report.json").read_text())
                                                    | {"executed_on": facts}, indent=2) + "\n")
        # paths in the report are this node's: make them the driver's
        swaps = [(str(out), driver_dir), (local["model"], str(entry.model))]
        payload = {}
        for p in sorted(out.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                if p.suffix in _TEXT:
                    text = data.decode()
                    for old, new in swaps:
                        text = text.replace(old, new)
                    data = text.encode()
                payload[str(p.relative_to(out))] = data
        return {"error": None, "files": payload, "report": json.loads(payload["report.json"]), "executed_on": facts,
                "elapsed_s": elapsed}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_outputs(target: Path, files: dict[str, bytes]) -> None:
    """Each file atomically; the fingerprint (what makes a model "up to date") last."""
    target.mkdir(parents=True, exist_ok=True)
    for rel in sorted(files, key=lambda r: r == ".fingerprint"):
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(files[rel])


def ray_executor(address: str = "auto", *, max_retries: int = 2):
    """An executor for :func:`edgequant.fleet.run_fleet` that runs each model as a Ray task."""

    def execute(todo: list[FleetEntry], out_dir: Path,
                progress: Callable[[str, str], None] | None = None) -> Iterator[FleetOutcome]:
        if not todo:
            return
        ray = connect(address)
        task = ray.remote(_run_remote)
        shipper = Shipper(ray)
        pending: dict[Any, FleetEntry] = {}
        for entry in longest_first(todo, out_dir):   # Ray starts tasks roughly in submission order
            files = {"model": shipper.ship(entry.model)}
            for key in ("calib", "eval"):
                src = getattr(entry, key)
                if src and not src.startswith("random:"):
                    files[key] = shipper.ship(src)
            cpus = max(1, entry.options.session.intra_op_threads or 1)   # a timing task owns its cores
            ref = task.options(num_cpus=cpus, max_retries=max_retries, retry_exceptions=False).remote(
                entry, files, str((out_dir / entry.name).resolve()))
            pending[ref] = entry
            if progress:
                progress(entry.name, "submitted to the Ray cluster")
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                entry = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - node lost after retries, task crashed
                    yield FleetOutcome(entry.name, "failed", error=f"on the Ray cluster: {_ray_error(exc)}")
                    continue
                if result["error"]:
                    yield FleetOutcome(entry.name, "failed", error=result["error"])
                    continue
                _write_outputs(out_dir / entry.name, result["files"])
                if progress:
                    progress(entry.name, f"done on node {result['executed_on']['node_id'][:8]}")
                yield FleetOutcome(entry.name, "done", result["report"], elapsed_s=result.get("elapsed_s"))
        except BaseException:
            for ref in pending:        # Ctrl-C (or anything else): no orphaned remote work
                ray.cancel(ref, force=True)
            raise

    return execute


def _ray_error(exc: BaseException) -> str:
    first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first.strip()[:200]}"
