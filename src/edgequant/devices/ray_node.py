"""A board on a Ray cluster: the node that joined with the resource ``edgequant_device:NAME``.

The board runs onnxruntime's CPU EP like ``cpu`` here, so its time is real latency: timing,
memory, profiles and outputs of a variant whose device is NAME run there, through one actor per
board that owns the sessions (an actor runs one call at a time: measurements never overlap on a
board). Models travel by content hash through the object store; feeds and outputs by value.
A board joins with::

    ray start --address HEAD:6379 --num-cpus 0 --resources '{"edgequant_device:NAME": 1}'

If the board disappears, a call fails with one line naming it; callers report what was not
measured. Ray is imported only when such a device is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgequantError
from ..measure.coverage import Coverage
from ..measure.latency import BenchResult
from ..measure.memory import MemoryResult
from ..measure.session import SessionConfig
from .base import Device, DeviceFacts, Feeds

RESOURCE_PREFIX = "edgequant_device:"


class _Host:
    """The actor on the board: materializes models, runs them with the board's CPU device."""

    def __init__(self) -> None:
        import ray

        from ._ray import node_facts

        self._ray = ray
        self.facts = node_facts(ray)

    def node(self) -> dict:
        return self.facts

    def call(self, method: str, models: list, session: SessionConfig, args: tuple, kwargs: dict) -> Any:
        from ._ray import materialize
        from .cpu import CpuDevice

        paths = [str(materialize(m, self._ray)) for m in models]
        device = CpuDevice(session)
        if method in ("time_interleaved", "outputs_list"):
            if method == "outputs_list":
                return [outs for outs, _ in device.iter_outputs(paths, args[0])]
            return getattr(device, method)(paths, *args, **kwargs)
        if method == "baseline_memory":
            return device.baseline_memory()
        return getattr(device, method)(paths[0], *args, **kwargs)


def device_nodes(ray: Any) -> dict[str, dict]:
    """Device name -> the node resource record of every live board on the cluster."""
    out = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(RESOURCE_PREFIX):
                out[key[len(RESOURCE_PREFIX):]] = node
    return out


class RayNodeDevice(Device):
    """A board on the Ray cluster this process is connected to (``ray.init``)."""

    kind = "ray-node"

    def __init__(self, name: str, session: SessionConfig | None = None, *, address: str = "auto") -> None:
        self.name = name
        self.session = session or SessionConfig()
        self.address = address
        self._actor = None
        self._shipper = None

    def _ray(self) -> Any:
        from ._ray import Shipper, connect

        ray = connect(self.address)
        if self._shipper is None:
            self._shipper = Shipper(ray)
        return ray

    def _host(self) -> Any:
        ray = self._ray()
        if self._actor is None:
            if self.name not in device_nodes(ray):
                raise EdgequantError(f"device {self.name}: no live node on the Ray cluster carries the resource "
                                     f"{RESOURCE_PREFIX}{self.name}")
            actor = ray.remote(_Host).options(
                name=f"edgequant-device-{self.name}", get_if_exists=True, num_cpus=0,
                resources={RESOURCE_PREFIX + self.name: 1}, max_restarts=0)
            self._actor = actor.remote()
        return self._actor

    def _call(self, method: str, model_paths: Sequence[str | Path], *args: Any, **kwargs: Any) -> Any:
        ray = self._ray()
        host = self._host()
        models = [self._shipper.ship(p) for p in model_paths]
        try:
            return ray.get(host.call.remote(method, models, self.session, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - the board died or its runtime failed
            self._actor = None
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise EdgequantError(f"device {self.name} (Ray node): {method} failed: {first.strip()[:200]}") from None

    def facts(self) -> DeviceFacts:
        try:
            ray = self._ray()
            nodes = device_nodes(ray)
        except EdgequantError as exc:
            return DeviceFacts(self.name, self.kind, False, str(exc), can_time=True)
        if self.name not in nodes:
            return DeviceFacts(self.name, self.kind, False,
                               f"no live Ray node carries {RESOURCE_PREFIX}{self.name}", can_time=True)
        try:
            f = ray.get(self._host().node.remote())
        except Exception as exc:  # noqa: BLE001 - listed a moment ago, gone now
            self._actor = None
            return DeviceFacts(self.name, self.kind, False, f"the board's node was lost ({type(exc).__name__})",
                               can_time=True)
        return DeviceFacts(self.name, self.kind, True,
                           f"Ray node {f['node_id'][:8]} ({f['hostname']}, {f['ip']}): {f['cpu']}, "
                           f"target {f['target']}", can_time=True)

    def location(self) -> dict:
        """The board's node id, host and CPU facts (what ``doctor`` would say there); after the
        board is gone, what it was, marked ``lost``."""
        try:
            self._location = self._ray().get(self._host().node.remote())
        except Exception:  # noqa: BLE001 - the board vanished: say which one it was
            return {**getattr(self, "_location", {"name": self.name}), "lost": True}
        return self._location

    def with_session(self, session: SessionConfig) -> RayNodeDevice:
        other = RayNodeDevice(self.name, session, address=self.address)
        other._actor, other._shipper = self._actor, self._shipper
        return other

    def iter_outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any],
                     outputs: Sequence[Sequence[str]] | None = None,
                     ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
        from ..measure.fidelity import feeds_of

        pairs = [feeds_of(s) for s in samples]
        results = self._call("outputs_list", model_paths, [dict(f) for f, _ in pairs])
        for outs, (_, label) in zip(results, pairs):
            if outputs is not None:
                outs = [{k: v for k, v in o.items() if k in set(names)} for o, names in zip(outs, outputs)]
            yield outs, label

    def time_interleaved(self, model_paths: Sequence[str | Path], feeds: Any, **kwargs: Any) -> BenchResult:
        import dataclasses

        bench = self._call("time_interleaved", model_paths, dict(feeds), **kwargs)
        # the board's copies have content-hash paths: name each timing by the caller's file
        return dataclasses.replace(bench, models=tuple(dataclasses.replace(m, path=str(p))
                                                       for m, p in zip(bench.models, model_paths)))

    def profile_ops(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> dict[str, float]:
        return self._call("profile_ops", [model_path], dict(feeds), **kwargs)

    def profile_nodes(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> dict[str, float]:
        return self._call("profile_nodes", [model_path], dict(feeds), **kwargs)

    def baseline_memory(self) -> float:
        return self._call("baseline_memory", [])

    def peak_memory(self, model_path: str | Path, feeds: Feeds, **kwargs: Any) -> MemoryResult:
        return self._call("peak_memory", [model_path], dict(feeds), **kwargs)

    def coverage(self, model_path: str | Path) -> Coverage:
        return self._call("coverage", [model_path])
