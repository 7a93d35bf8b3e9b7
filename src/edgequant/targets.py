"""CPU feature detection and per-target quantization rules (DESIGN.md "Target rules").

The rules are defaults chosen from what each instruction set does with INT8:
- x86 without VNNI multiplies u8 x s8 with VPMADDUBSW, whose int16 accumulation saturates for
  full-range weights: use 7-bit weights (reduce_range) to stay exact.
- x86 with VNNI (AVX512_VNNI / AVX_VNNI) accumulates in int32: full-range U8S8.
- x86 with AMX-INT8 tiles (Sapphire Rapids and later): VNNI's rule, and the convolutions whose
  general int8 GEMM reaches the tiles are steered there (qdq/amx_weights.py).
- arm64 dot-product / i8mm kernels handle signed int8: per-channel S8 weights.
- Qualcomm Hexagon (QNN HTP) wants QDQ with static shapes and symmetric int8 weights.
Measurement (``tune``) overrides them.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TARGETS = ("x86-avx2", "x86-vnni", "x86-amx", "arm64", "qnn")

# Flags worth naming in reports; the full list is long and uninteresting.
_INTERESTING = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_tile",
                "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    model: str
    isa: tuple[str, ...]
    logical_cores: int

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa

    @property
    def has_amx_int8(self) -> bool:
        return "amx_int8" in self.isa and "amx_tile" in self.isa


@lru_cache(maxsize=1)
def detect_cpu() -> CpuInfo:
    """Read CPU model and ISA flags (Linux /proc/cpuinfo; platform module elsewhere)."""
    arch = platform.machine().lower()
    model = platform.processor() or arch
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    isa = tuple(f for f in _INTERESTING if f in flags)
    return CpuInfo(arch=arch, model=model, isa=isa, logical_cores=os.cpu_count() or 1)


@dataclass(frozen=True)
class TargetRule:
    """Quantization defaults for one target."""

    name: str
    activation_type: str          # uint8 | int8 | uint16 | int16
    weight_type: str              # int8 | uint8
    reduce_range: bool
    per_channel: bool
    quant_format: str = "qdq"     # qdq | qoperator
    weight_symmetric: bool = True
    requires_static_shapes: bool = False
    # edgequant's exact FP32 rewrites (PRelu -> Relu form) are CPU speed tricks; an NPU compiles
    # its own graph and runs PRelu natively (qnn gets its own rewrites: qdq/htp_rules.py).
    exact_rewrites: bool = True
    # Whether a layer may be kept in float when INT8 misses the budget. HTP has no float path
    # worth shipping: a float node there runs on the CPU, so tune stays fully quantized (16-bit).
    float_fallback: bool = True
    why: str = ""
    extra_options: dict = field(default_factory=dict)


RULES: dict[str, TargetRule] = {
    "x86-avx2": TargetRule(
        "x86-avx2", "uint8", "int8", reduce_range=True, per_channel=True,
        why="no VNNI: VPMADDUBSW saturates u8*s8 pairs in int16, so weights use 7 bits"),
    "x86-vnni": TargetRule(
        "x86-vnni", "uint8", "int8", reduce_range=False, per_channel=True,
        why="VNNI accumulates u8*s8 in int32: full 8-bit range is safe"),
    "x86-amx": TargetRule(
        "x86-amx", "uint8", "int8", reduce_range=False, per_channel=True,
        why="AMX-INT8 tiles accumulate u8*s8 in int32 (full 8-bit range); wide convolutions are steered "
            "to onnxruntime's GEMM path, which uses the tiles"),
    "arm64": TargetRule(
        "arm64", "uint8", "int8", reduce_range=False, per_channel=True,
        why="NEON dot-product/i8mm kernels take full-range int8 weights; per-channel keeps accuracy"),
    "qnn": TargetRule(
        "qnn", "uint8", "int8", reduce_range=False, per_channel=True, weight_symmetric=True,
        requires_static_shapes=True, exact_rewrites=False, float_fallback=False,
        why="Hexagon HTP runs QDQ graphs with static shapes, uint8/uint16 activations, symmetric int8 weights"),
}


def auto_target(cpu: CpuInfo | None = None) -> str:
    """The target rule for this machine's CPU."""
    cpu = cpu or detect_cpu()
    if cpu.arch in ("aarch64", "arm64"):
        return "arm64"
    if cpu.has_amx_int8:
        return "x86-amx"
    return "x86-vnni" if cpu.has_vnni else "x86-avx2"


def resolve_target(name: str) -> TargetRule:
    """``auto`` or an explicit target name -> its rule."""
    if name == "auto":
        name = auto_target()
    if name not in RULES:
        from .errors import EdgequantError
        raise EdgequantError(f"unknown target {name!r}; expected auto or one of {', '.join(TARGETS)}")
    return RULES[name]
