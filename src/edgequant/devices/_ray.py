"""Ray plumbing shared by the device nodes (``devices.ray_node``) and the fleet tasks
(``edgequant.scaleout``): connecting, who a node is, and files through the object store by
content hash (each distinct file travels once; a worker writes it under a content-addressed
folder of its temp directory, reused by every later task on that node).

Only imported when a Ray feature is asked for; importing this module does not import Ray.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgequantError

# Ray reports usage statistics to its servers unless told not to: never send traffic outside
# the cluster.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> Any:
    """The ray module, or one clear error naming the extra to install."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise EdgequantError("--ray needs Ray: pip install 'edgequant[ray]'") from None
    return ray


def connect(address: str = "auto") -> Any:
    """``ray.init`` against ``address`` (``auto``: the cluster this machine belongs to); idempotent."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise EdgequantError(f"--ray {address}: cannot connect to a Ray cluster: {first.strip()[:200]}") from None
    return ray


def node_facts(ray: Any) -> dict:
    """Which node this is, with the CPU facts ``doctor`` reports (``executed_on`` in reports)."""
    from ..targets import auto_target, detect_cpu

    cpu = detect_cpu()
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "hostname": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(), "cpu": cpu.model, "isa": list(cpu.isa),
            "target": auto_target(cpu)}


def use_assigned_cpus(ray: Any) -> None:
    """Sessions in this task use the CPUs Ray assigned it (its ``num_cpus``), not every core of
    the node: Ray reserves CPUs but does not confine a task to them."""
    from ..measure.session import limit_cpus

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        limit_cpus(max(1, round(cpus)))


@dataclass(frozen=True)
class Shipped:
    """A file or folder in the object store: what a worker needs to materialize it."""

    sha: str
    name: str                 # file or folder name (extensions matter to the readers)
    ref: Any                  # ray.ObjectRef of bytes (file) or {relative path: bytes} (folder)
    folder: bool = False


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(payload: bytes | dict[str, bytes]) -> str:
    h = hashlib.sha256()
    if isinstance(payload, bytes):
        h.update(payload)
    else:
        for rel, data in sorted(payload.items()):
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


class Shipper:
    """Driver side: one object-store entry per distinct content."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._by_sha: dict[str, Any] = {}

    def ship(self, path: str | Path) -> Shipped:
        path = Path(path)
        payload = _read_tree(path) if path.is_dir() else path.read_bytes()
        sha = _digest(payload)
        if sha not in self._by_sha:
            self._by_sha[sha] = self._ray.put(payload)
        return Shipped(sha, path.name, self._by_sha[sha], folder=path.is_dir())


def materialize(item: Shipped, ray: Any, root: Path | None = None) -> Path:
    """Worker side: the shipped file/folder on this node's disk (written once per content)."""
    root = root or Path(tempfile.gettempdir()) / "edgequant-ray"
    dest = root / item.sha / item.name
    if dest.exists():
        return dest
    payload = ray.get(item.ref)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_ensure(root)))
    target = staging / item.name
    if item.folder:
        for rel, data in payload.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
    else:
        target.write_bytes(payload)
    _ensure(dest.parent)
    try:
        os.replace(target, dest)   # atomic: a concurrent task on this node sees all or nothing
    except OSError:
        if not dest.exists():
            raise
    return dest


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
