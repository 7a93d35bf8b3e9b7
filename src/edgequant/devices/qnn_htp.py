"""Qualcomm Hexagon NPU through onnxruntime-qnn's HTP backend (optional extra ``edgequant[qnn]``).

On Linux x86-64, ``libQnnHtp.so`` is Qualcomm's HTP simulator: it compiles and executes the
graph the way the NPU would (same op support, same fixed-point arithmetic), so accuracy and node
placement are real, and its time is not latency (``can_time`` is false). onnxruntime-qnn 2.x is a
plugin EP: registered once per process, then attached per session with ``add_provider_for_devices``.

The simulator is told which Snapdragon it is (``soc_model``, default SM8650 / Snapdragon 8 Gen 3,
HTP v75; ``EDGEQUANT_QNN_SOC_MODEL`` sets another QNN SoC id, e.g. 43 SM8550, 69 SM8750). Without
one it finalizes small graphs but fails the HF BertModel with QNN_COMMON_ERROR_MEM_ALLOC, in 0.3 s;
with any concrete SoC the same model finalizes (812 nodes on HTP).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import EdgequantError
from ..measure.coverage import FLOAT_COMPUTE_OPS, INT8_COMPUTE_OPS, Coverage, Placement
from ..measure.session import SessionConfig, session_options
from ..quiet import native_output_silenced
from .base import DeviceFacts, EmulatedDevice, Feeds
from .cpu_session import iter_session_outputs, open_session

EP_NAME = "QNNExecutionProvider"
# ORT's layout transformation re-creates nodes as NAME_token_N before handing them to the EP
_TOKEN = re.compile(r"(_token_\d+)+$")
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
DEFAULT_SOC_MODEL = "57"    # QNN's id of SM8650 (Snapdragon 8 Gen 3, HTP v75)
_SOC_NAMES = {"43": "SM8550", "57": "SM8650", "69": "SM8750", "87": "SM8850"}
_registered = False


def _simulated() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def soc_model() -> str | None:
    """The QNN SoC id the HTP backend compiles for: ``EDGEQUANT_QNN_SOC_MODEL``, else SM8650's on
    the simulator (a real device knows its own)."""
    value = os.environ.get("EDGEQUANT_QNN_SOC_MODEL", "").strip()
    if value and not value.isdigit():
        raise EdgequantError(f"EDGEQUANT_QNN_SOC_MODEL={value!r}: expected QNN's numeric SoC id (e.g. 57 for SM8650)")
    return value or (DEFAULT_SOC_MODEL if _simulated() else None)


def _qnn_module() -> tuple[Any | None, str]:
    """The onnxruntime_qnn module, or None and why it cannot be used here."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return None, "onnxruntime-qnn is not installed (pip install 'edgequant[qnn]')"
    htp = Path(onnxruntime_qnn.get_qnn_htp_path())
    if not htp.is_file():
        return None, f"onnxruntime-qnn {onnxruntime_qnn.__version__} has no HTP backend library ({htp.name})"
    return onnxruntime_qnn, ""


def _ep_devices() -> list:
    """Register the plugin EP once per process; its OrtEpDevice entries."""
    global _registered
    import onnxruntime as ort

    qnn, why = _qnn_module()
    if qnn is None:
        raise EdgequantError(f"device qnn-htp: {why}")
    if not _registered:
        with native_output_silenced():
            try:
                ort.register_execution_provider_library(EP_NAME, qnn.get_library_path())
            except Exception as exc:  # noqa: BLE001 - already registered by another caller is fine
                if "already" not in str(exc).lower():
                    raise EdgequantError(f"device qnn-htp: cannot register {EP_NAME}: {exc}") from None
        _registered = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise EdgequantError("device qnn-htp: onnxruntime lists no QNN device after registering the plugin")
    return devices


class QnnHtpDevice(EmulatedDevice):
    """The HTP backend of onnxruntime-qnn (the simulator on x86-64 hosts; a real Hexagon device,
    where timing would go, is not supported yet)."""

    name = "qnn-htp"
    kind = "qnn-htp"
    untimed_reason = "the HTP backend on this host is a simulator, whose time and memory are not the NPU's"

    def __init__(self, session: SessionConfig | None = None, *, provider_options: dict[str, str] | None = None) -> None:
        self.session = session or SessionConfig()
        soc = soc_model()
        self.provider_options = {**({"soc_model": soc} if soc else {}), **(provider_options or {})}
        self._assignments: dict[tuple[str, int], list[tuple[str, Any]]] = {}

    def facts(self) -> DeviceFacts:
        qnn, why = _qnn_module()
        simulated = _simulated()
        if qnn is None:
            return DeviceFacts(self.name, self.kind, False, why, can_time=False, emulated=simulated)
        soc = self.provider_options.get("soc_model", "")
        chip = f"QNN SoC {soc}" + (f" ({_SOC_NAMES[soc]})" if soc in _SOC_NAMES else "")
        where = (f"Qualcomm's HTP simulator on this x86-64 host, as {chip}" if simulated
                 else "the Hexagon NPU of this device")
        # timing on a real Hexagon device is not implemented: never claim it
        return DeviceFacts(self.name, self.kind, True, f"onnxruntime-qnn {qnn.__version__}: {where}",
                           can_time=False, emulated=simulated)

    def with_session(self, session: SessionConfig) -> QnnHtpDevice:
        return QnnHtpDevice(session, provider_options=self.provider_options)

    def open(self, model_path: str | Path):
        """A session whose nodes go to HTP where the backend supports them (the rest to the CPU EP)."""
        qnn, _ = _qnn_module()
        devices = _ep_devices()
        so = session_options(self.session)
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        so.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(), **self.provider_options})
        with native_output_silenced():
            return open_session(model_path, self.session, options=so, plugin_ep=True)

    def iter_outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any],
                     outputs: Sequence[Sequence[str]] | None = None,
                     ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
        paths = [str(p) for p in model_paths]
        return iter_session_outputs([self.open(p) for p in paths], paths, samples, outputs)

    def _assignment(self, model_path: str | Path) -> list[tuple[str, Any]]:
        """(EP name, node) for every node, from one HTP compilation per file version: placement and
        coverage of a variant share it instead of compiling the graph twice."""
        p = Path(model_path)
        key = (str(p.resolve()), p.stat().st_mtime_ns)
        if key not in self._assignments:
            session = self.open(p)
            self._assignments[key] = [(ep.ep_name, node) for ep in session.get_provider_graph_assignment_info()
                                      for node in ep.get_nodes()]
        return self._assignments[key]

    def placement(self, model_path: str | Path) -> Placement:
        """How many nodes HTP runs, and which fall back to the CPU EP (graph I/O Q/DQ apart; every
        other operator on the CPU is a defect for this target, see :class:`Placement`)."""
        model = onnx.load(str(model_path), load_external_data=False)
        io_budget = len(model.graph.input) + len(model.graph.output)
        on_htp, fallback, io, operators = 0, [], 0, []
        for ep_name, node in self._assignment(model_path):
            if ep_name == EP_NAME:
                on_htp += 1
            elif node.op_type in _QDQ and io < io_budget:
                io += 1   # quantizing graph inputs / dequantizing graph outputs on the CPU is by design
            else:
                fallback.append(f"{_base_name(node.name)} ({node.op_type})")
                if node.op_type not in _QDQ:
                    operators.append((_base_name(node.name), node.op_type))
        return Placement(on_htp, len(fallback), fallback, io, len(operators), tuple(operators))

    def coverage(self, model_path: str | Path) -> Coverage:
        """Quantized compute ops (QDQ-wrapped or integer) that HTP runs, vs all compute ops.

        A float compute op on HTP runs in fp16, not INT8, so it does not count as quantized.
        """
        quantized = _quantized_compute_nodes(onnx.load(str(model_path), load_external_data=False))
        int8_on_htp, others = 0, []
        for ep_name, node in self._assignment(model_path):
            if node.op_type in FLOAT_COMPUTE_OPS or node.op_type in INT8_COMPUTE_OPS:
                if ep_name == EP_NAME and _base_name(node.name) in quantized:
                    int8_on_htp += 1
                else:
                    others.append(node.name)
        return Coverage(int8_on_htp, int8_on_htp + len(others), others)

    def export_context(self, model_path: str | Path, out_path: str | Path, check_feeds: Feeds | None = None) -> Path:
        """Compile ``model_path`` for HTP and write the EPContext model (the binary embedded), so a
        device loads a precompiled graph instead of compiling at start-up. With ``check_feeds`` the
        exported file is loaded back and must give the same outputs as the source model on HTP."""
        from ..fsutil import atomic_path

        qnn, _ = _qnn_module()
        devices = _ep_devices()
        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            ctx = tmp.with_name(tmp.name + ".onnx")       # ORT wants an .onnx name to write to
            so = session_options(self.session)
            so.add_session_config_entry("ep.context_enable", "1")
            so.add_session_config_entry("ep.context_embed_mode", "1")
            so.add_session_config_entry("ep.context_file_path", str(ctx))
            so.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(), **self.provider_options})
            try:
                with native_output_silenced():
                    open_session(model_path, self.session, options=so, plugin_ep=True)
                if not ctx.is_file():
                    raise EdgequantError(f"{model_path}: onnxruntime-qnn wrote no EPContext model")
                if check_feeds is not None:
                    want = self.open(model_path).run(None, dict(check_feeds))
                    got = self.open(ctx).run(None, dict(check_feeds))
                    worst = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                for a, b in zip(want, got))
                    if worst > 0.0:
                        raise EdgequantError(f"{out_path}: the EPContext model's outputs differ from the source "
                                             f"model's on HTP (max abs diff {worst:.3g})")
                ctx.replace(tmp)
            finally:
                ctx.unlink(missing_ok=True)
        return out_path


def _quantized_compute_nodes(model: onnx.ModelProto) -> set[str]:
    """Compute nodes that run quantized: integer op types, or QDQ form (a DequantizeLinear input)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for n in model.graph.node:
        if n.op_type in INT8_COMPUTE_OPS:
            out.add(n.name)
        elif n.op_type in FLOAT_COMPUTE_OPS and any(
                (p := producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input):
            out.add(n.name)
    return out


def _base_name(node_name: str) -> str:
    return _TOKEN.sub("", node_name)
