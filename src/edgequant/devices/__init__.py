"""Devices: the one place that runs a model (see :class:`edgequant.devices.base.Device`).

``cpu`` is onnxruntime's CPU EP on this machine. The QNN HTP backend, the arm64 emulator and
boards on a Ray cluster plug in here as one module each. pipeline, tune, sensitivity and the
QDQ recipes reach a device only through this interface, never a runtime directly.

Names load lazily: the CPU memory probe child runs ``python -m edgequant.devices._cpu_memprobe``
and must import nothing but numpy and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Device": "base", "DeviceFacts": "base",
    "CpuDevice": "cpu", "local_cpu": "cpu", "analysis_cpu": "cpu",
    "get_device": "registry", "list_devices": "registry", "resolve_device": "registry", "DEVICE_NAMES": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
