"""The facts about the machine that every measurement is printed and saved with."""

from __future__ import annotations

from typing import Any

from ..targets import detect_cpu
from .session import SessionConfig, effective_threads


def machine_facts(cfg: SessionConfig) -> dict[str, Any]:
    """``report.json``'s ``machine`` object (cpu, isa, onnxruntime, threads) plus arch and cores."""
    import onnxruntime as ort

    cpu = detect_cpu()
    return {"cpu": cpu.model, "isa": list(cpu.isa), "onnxruntime": ort.__version__,
            "threads": effective_threads(cfg), "arch": cpu.arch, "logical_cores": cpu.logical_cores}


def describe_machine(facts: dict[str, Any]) -> str:
    """One line for the terminal."""
    isa = " ".join(facts["isa"]) or "no notable ISA extensions"
    return (f"{facts['cpu']} ({facts['arch']}, {facts['logical_cores']} logical cores; {isa}), "
            f"onnxruntime {facts['onnxruntime']}, {facts['threads']} intra-op thread(s)")
