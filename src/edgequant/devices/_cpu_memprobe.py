"""Child process of :mod:`edgequant.devices.cpu_memory`; prints one JSON line on stdout.

``python -m edgequant.devices._cpu_memprobe baseline`` imports what the model probe imports
(numpy, onnxruntime, the session modules) and reports its peak RSS.
``python -m edgequant.devices._cpu_memprobe model MODEL INPUTS.npz CONFIG_JSON WARMUP RUNS`` also
loads the model, warms it up and runs it, then reports its peak RSS.
Inputs come through an ``.npz`` read with ``allow_pickle=False``; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime  # noqa: F401 - imported by both modes so the baseline includes it

from edgequant.devices.cpu_session import open_session
from edgequant.measure.session import SessionConfig


def peak_rss_mb() -> tuple[float, str]:
    """Peak resident set size of this process in MiB, and how it was measured.

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of *this* address space.
    ``getrusage().ru_maxrss`` is wrong here: Linux carries it across fork+exec, so a child of a
    1 GB parent reports >= 1 GB whatever it does. Elsewhere: ru_maxrss, then psutil.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0, "VmHWM"  # kB
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB elsewhere
        return peak * scale / 2**20, "getrusage.ru_maxrss"
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        peak = getattr(info, "peak_wset", None)
        if peak:
            return peak / 2**20, "psutil.peak_wset"
        return info.rss / 2**20, "psutil.rss (current, not peak)"


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if mode == "baseline":
        pass
    elif mode == "model" and len(argv) == 6:
        model, inputs, config, warmup, runs = argv[1], argv[2], argv[3], int(argv[4]), int(argv[5])
        with np.load(inputs, allow_pickle=False) as npz:
            feeds = {k: npz[k] for k in npz.files}
        session = open_session(model, SessionConfig.from_dict(json.loads(config)))
        for _ in range(warmup + runs):
            session.run(None, feeds)
    else:
        print("usage: _memprobe baseline | model MODEL INPUTS.npz CONFIG_JSON WARMUP RUNS", file=sys.stderr)
        return 2
    peak, method = peak_rss_mb()
    print(json.dumps({"peak_rss_mb": peak, "method": method}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - the parent shows this last line to the user
        text = " ".join(str(exc).split())[:400]
        print(f"{type(exc).__name__}: {text}", file=sys.stderr)
        sys.exit(1)
