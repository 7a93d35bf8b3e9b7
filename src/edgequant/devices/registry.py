"""Device names -> devices: what ``--device`` accepts and what ``edgequant devices`` lists."""

from __future__ import annotations

from ..errors import EdgequantError
from ..measure.session import SessionConfig
from .base import Device, DeviceFacts
from .cpu import CpuDevice

#: Devices this build knows; each new device module adds its name here.
DEVICE_NAMES = ("cpu",)


def get_device(name: str = "cpu", session: SessionConfig | None = None) -> Device:
    """The device called ``name``, ready to run jobs with ``session`` settings."""
    if name == "cpu":
        return CpuDevice(session)
    raise EdgequantError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_NAMES)}")


def list_devices() -> list[DeviceFacts]:
    """Every known device and whether it can be used here (and why not)."""
    return [get_device(name).facts() for name in DEVICE_NAMES]
