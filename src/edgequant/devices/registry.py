"""Device names -> devices: what ``--device`` accepts and what ``edgequant devices`` lists."""

from __future__ import annotations

from ..errors import EdgequantError
from ..measure.session import SessionConfig
from .base import Device, DeviceFacts
from .cpu import CpuDevice

#: Devices this build knows; each new device module adds its name here.
DEVICE_NAMES = ("cpu", "qnn-htp", "arm64-emu")


def get_device(name: str = "cpu", session: SessionConfig | None = None) -> Device:
    """The device called ``name``, ready to run jobs with ``session`` settings."""
    if name == "cpu":
        return CpuDevice(session)
    if name == "qnn-htp":
        from .qnn_htp import QnnHtpDevice

        return QnnHtpDevice(session)
    if name == "arm64-emu":
        from .arm64_emu import Arm64EmuDevice

        return Arm64EmuDevice(session)
    if _ray_connected_or_asked():
        from .ray_node import RayNodeDevice, device_nodes

        device = RayNodeDevice(name, session)
        if name in _BOARDS_SEEN or name in device_nodes(device._ray()):
            _BOARDS_SEEN.add(name)    # a board that vanishes later stays a (lost) device, not a typo
            return device
    raise EdgequantError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_NAMES)}, or the name of a "
                         "board on the Ray cluster this process joined (edgequant devices --ray lists them)")


_BOARDS_SEEN: set[str] = set()


def _ray_connected_or_asked() -> bool:
    """A device name we do not know may be a board on a Ray cluster: only look when this process
    already uses Ray, or RAY_ADDRESS names a cluster (never import Ray otherwise)."""
    import os
    import sys

    ray = sys.modules.get("ray")
    return bool(os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


#: The device that verifies each target, when it is available here.
TARGET_DEVICES = {"qnn": "qnn-htp", "arm64": "arm64-emu"}


def resolve_device(name: str, target: str) -> tuple[str, str | None]:
    """``auto`` -> the target's own device when available here, else ``cpu`` with a note saying
    the target was not verified; an explicit name is taken as given."""
    if name != "auto":
        get_device(name)  # unknown names fail here, before any work
        return name, None
    wanted = TARGET_DEVICES.get(target)
    if wanted is None:
        return "cpu", None
    facts = get_device(wanted).facts()
    if facts.available:
        return wanted, None
    return "cpu", (f"target {target} was not verified on its device: {wanted} is not available here "
                   f"({facts.why}); accuracy and coverage come from onnxruntime's CPU EP")


def list_devices() -> list[DeviceFacts]:
    """Every known device and whether it can be used here (and why not)."""
    return [get_device(name).facts() for name in DEVICE_NAMES]
