"""Connecting to a Ray cluster, and a loopback-only local cluster for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..devices._ray import connect, import_ray  # noqa: F401 - re-exported
from ..errors import EdgequantError

_ACTIVE: dict[str, Any] = {}


def active_cluster(address: str) -> Any:
    """The ``ray.cluster_utils.Cluster`` behind a :func:`local_cluster` address (tests add and
    kill nodes through it)."""
    return _ACTIVE[address]


@contextlib.contextmanager
def local_cluster(workers: int = 2, cpus_per_worker: int = 1, *, object_store_mb: int = 200,
                  worker_resources: list[dict[str, float]] | None = None) -> Iterator[str]:
    """A head (no CPUs) plus ``workers`` worker nodes on this machine, all bound to 127.0.0.1;
    yields the address. For tests and the scale-out benchmark; a real cluster is ``ray start``.

    Ray 2.60 replaces 127.0.0.1 with the machine's interface address unless its "clusters
    disabled" switch is set, which ``ray.cluster_utils.Cluster`` (in-process nodes) tolerates."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"    # keeps every node on the loopback
    ray = import_ray()
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False     # read at import: the env var alone is too late

    store = object_store_mb * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": store})
    try:
        for i in range(workers):
            extra = (worker_resources or [])[i] if i < len(worker_resources or []) else {}
            cluster.add_node(num_cpus=cpus_per_worker, object_store_memory=store // 2, resources=dict(extra))
        cluster.wait_for_nodes()
        _ACTIVE[cluster.address] = cluster
        if not cluster.address.startswith("127.0.0.1:"):
            raise EdgequantError(f"local Ray cluster bound to {cluster.address}, not the loopback: refusing to use it")
        yield cluster.address
    finally:
        _ACTIVE.pop(cluster.address, None)
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
