"""Which machine a benchmark ran on, and where its results go (kept per ISA).

No edgequant import: the OpenVINO benchmark's own venv (another onnxruntime build) uses it too.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

FLAGS_OF_INTEREST = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine() -> dict:
    """CPU model, ISA flags that matter for INT8 kernels, core count, library versions."""
    model, flags = platform.processor() or "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
        f = re.search(r"Flags:\s*(.+)", out)
        flags = set(f.group(1).split()) if f else set()
    except (OSError, subprocess.CalledProcessError):
        pass
    isa = [x for x in FLAGS_OF_INTEREST if x in flags]
    return {"cpu": model, "isa": isa, "vnni": any("vnni" in x for x in isa), "amx": "amx_int8" in isa, "cores": os.cpu_count(),
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def isa_target(mach: dict) -> str:
    """The edgequant CPU target this machine's ISA selects (what `edgequant doctor` reports)."""
    return "x86-amx" if mach.get("amx") else "x86-vnni" if mach["vnni"] else "x86-avx2"


def isa_results_dir(results: Path, mach: dict) -> Path:
    """Results are kept per ISA: results/ (AVX2), results/vnni/, results/amx/ (VNNI with AMX-INT8 tiles)."""
    return results / ("amx" if mach.get("amx") else "vnni" if mach["vnni"] else "")
