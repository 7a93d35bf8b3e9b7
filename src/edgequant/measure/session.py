"""Inference-session settings (seed section 3.1) as one typed, reportable value.

Every device job builds its sessions from one :class:`SessionConfig` so that latency, memory and
fidelity runs use exactly the options the report names. This module imports only onnxruntime
(not onnx) so that the memory probe's baseline process stays comparable to its model process.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import onnxruntime as ort

from ..errors import EdgequantError

GRAPH_OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# CPUs an edgequant worker was given (a process-pool worker, a Ray task's num_cpus): sessions left
# at "ORT decides" use that many threads. ORT's own default pins one spinning thread per core, so
# two workers sharing the cores would each wait on the other's spinning threads (measured: two
# concurrent 1-CPU processes run 2x slower with ORT's default pool than with one thread each).
CPUS_ENV = "EDGEQUANT_CPUS"


def limit_cpus(count: int) -> None:
    """This process (and the processes it starts) may use ``count`` CPUs."""
    os.environ[CPUS_ENV] = str(max(1, int(count)))


def cpu_allowance() -> int | None:
    """CPUs this process was given by the worker that runs it, or None when it has the machine."""
    value = os.environ.get(CPUS_ENV, "")
    return max(1, int(value)) if value.isdigit() else None


def available_cpus() -> int:
    """CPUs this process may use: its allowance, else the cores its affinity mask allows."""
    given = cpu_allowance()
    if given is not None:
        return given
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


EXECUTION_MODES: dict[str, ort.ExecutionMode] = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}
EXECUTION_ORDERS: dict[str, ort.ExecutionOrder] = {
    "default": ort.ExecutionOrder.DEFAULT,
    "priority": ort.ExecutionOrder.PRIORITY_BASED,
}


#: onnxruntime's intra-op workers go on spinning after a run returns. When sessions take turns on
#: the same cores, the idle sessions' spinning workers hold the cores the running one needs: resnet18
#: FP32 at 2 threads on 2 vCPUs took 37 ms interleaved with its INT8 (its 1-thread time) against 18 ms
#: with this entry (``benchmarks/thread_scaling.py``). It parks the workers when a run returns; they
#: still spin inside a run, so unlike ``allow_spinning=False`` no parallel section waits for a wake-up
#: (faster than that in 14 of 16 cases measured at 2-8 threads, by up to 37%). No workers at 1 thread:
#: no effect there.
STOP_SPINNING_BETWEEN_RUNS = "session.force_spinning_stop"


@dataclass(frozen=True)
class SessionConfig:
    """ONNX Runtime session options. ``0`` threads means "let ORT decide" (physical cores), or in an
    edgequant worker the CPUs it was given (:func:`cpu_allowance`)."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"          # disable | basic | extended | all
    enable_mem_arena: bool = True
    enable_mem_pattern: bool = True
    execution_mode: str = "sequential"       # sequential | parallel
    allow_spinning: bool | None = None       # None: ORT default (spin)
    execution_order: str = "default"         # default | priority (the order nodes are run in)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    config_entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPT_LEVELS:
            raise EdgequantError(f"unknown graph optimization level {self.graph_optimization!r}; "
                                 f"expected one of {', '.join(GRAPH_OPT_LEVELS)}")
        if self.execution_mode not in EXECUTION_MODES:
            raise EdgequantError(f"unknown execution mode {self.execution_mode!r}; "
                                 f"expected one of {', '.join(EXECUTION_MODES)}")
        if self.execution_order not in EXECUTION_ORDERS:
            raise EdgequantError(f"unknown execution order {self.execution_order!r}; "
                                 f"expected one of {', '.join(EXECUTION_ORDERS)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise EdgequantError(f"{name} must be an integer >= 0 (0 = ORT default), got {value!r}")
        if not self.providers:
            raise EdgequantError("at least one execution provider is required")
        object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "config_entries", {str(k): str(v) for k, v in self.config_entries.items()})

    def with_(self, **changes: Any) -> SessionConfig:
        """A copy with some fields changed (e.g. ``cfg.with_(intra_op_threads=1)``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for reports; round-trips through :meth:`from_dict`."""
        d = asdict(self)
        d["providers"] = list(self.providers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "providers" in known:
            known["providers"] = tuple(known["providers"])
        return cls(**known)


def session_options(cfg: SessionConfig) -> ort.SessionOptions:
    """Translate a :class:`SessionConfig` into ``ort.SessionOptions``."""
    so = ort.SessionOptions()
    given = cpu_allowance() or 0
    so.intra_op_num_threads = cfg.intra_op_threads or given
    so.inter_op_num_threads = cfg.inter_op_threads or given
    so.graph_optimization_level = GRAPH_OPT_LEVELS[cfg.graph_optimization]
    so.enable_cpu_mem_arena = cfg.enable_mem_arena
    so.enable_mem_pattern = cfg.enable_mem_pattern
    so.execution_mode = EXECUTION_MODES[cfg.execution_mode]
    so.execution_order = EXECUTION_ORDERS[cfg.execution_order]
    so.log_severity_level = 4  # fatal only: a failure reaches the user as our one-line error
    if cfg.allow_spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if cfg.allow_spinning else "0")
    for key, value in cfg.config_entries.items():
        so.add_session_config_entry(key, value)
    return so


def effective_threads(cfg: SessionConfig) -> int:
    """Intra-op threads the session will use: the configured number, or ORT's default."""
    if cfg.intra_op_threads > 0:
        return cfg.intra_op_threads
    given = cpu_allowance()
    if given is not None:
        return given
    try:  # ORT's default is one thread per physical core
        import psutil

        return int(psutil.cpu_count(logical=False) or psutil.cpu_count() or 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        import os

        return os.cpu_count() or 1
