"""Scale out on Ray (optional extra ``edgequant[ray]``): fleet models as Ray tasks.

Entry point::

    from edgequant.scaleout import ray_executor
    run_fleet(fleet_yaml, out_dir, executor=ray_executor("auto" | "HOST:PORT"))

What runs where: the driver (this process) validates the fleet, decides what is up to date, puts
every model and data file into Ray's object store once by content hash, and writes each model's
outputs when its task returns (atomically, fingerprint last, so an interrupted fleet leaves no
partial model folder and a re-run resumes). A worker node materializes the files it needs from
the object store, runs the model's ``run``/``tune`` exactly as in-process, and returns its output
files. Nothing here imports Ray until a Ray executor is asked for.
"""

from __future__ import annotations

from .cluster import connect, local_cluster
from .fleet_tasks import ray_executor

__all__ = ["connect", "local_cluster", "ray_executor"]
