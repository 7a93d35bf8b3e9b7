"""arm64 under emulation: aarch64 onnxruntime (the host's version) in a Debian arm64 root, run
through qemu-user. It answers "what does the same file compute on an ARM CPU" (accuracy, INT8
coverage as the arm64 build fuses it); emulated time is not latency, so it never times.

Each job copies the models and inputs into the root, runs the in-guest runner once under
``chroot``, and reads ``.npz`` results back (no pickle). Set up with
``edgequant devices setup arm64-emu`` (see :mod:`edgequant.devices.arm64_setup`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import EdgequantError
from ..measure.coverage import Coverage, coverage_of_graph
from ..measure.fidelity import feeds_of
from ..measure.session import SessionConfig
from . import arm64_setup
from .base import DeviceFacts, EmulatedDevice

_TIMEOUT_S = 3600.0


class Arm64EmuDevice(EmulatedDevice):
    """aarch64 onnxruntime under qemu-user (accuracy and coverage only)."""

    name = "arm64-emu"
    kind = "arm64-emu"
    untimed_reason = "emulated time and memory are not a board's"

    def __init__(self, session: SessionConfig | None = None, root: Path | None = None) -> None:
        self.session = session or SessionConfig()
        self.root = Path(root or arm64_setup.default_root())

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    def why_not(self) -> str | None:
        if os.name != "posix" or os.geteuid() != 0:
            return "needs root (chroot into the arm64 root)"
        if not arm64_setup.binfmt_registered():
            return "qemu-aarch64 is not registered with binfmt_misc: run `edgequant devices setup arm64-emu`"
        if not arm64_setup.is_ready(self.root):
            return f"arm64 root not built at {self.root}: run `edgequant devices setup arm64-emu`"
        return None

    def facts(self) -> DeviceFacts:
        why = self.why_not()
        if why:
            return DeviceFacts(self.name, self.kind, False, why, can_time=False, emulated=True)
        return DeviceFacts(self.name, self.kind, True,
                           f"aarch64 onnxruntime {arm64_setup.host_ort_version()} in Debian {arm64_setup.SUITE} "
                           "arm64 under qemu-user (emulated: no latency)", can_time=False, emulated=True)

    def with_session(self, session: SessionConfig) -> Arm64EmuDevice:
        return Arm64EmuDevice(session, self.root)

    # ---- jobs in the guest ------------------------------------------------------------------

    def _job(self, kind: str, model_paths: Sequence[str | Path], inputs: dict[str, np.ndarray] | None) -> Path:
        """Run one job in the guest; returns its folder (inside the root; the caller removes it)."""
        why = self.why_not()
        if why:
            raise EdgequantError(f"device arm64-emu: {why}")
        arm64_setup.install_runner(self.rootfs)
        tmp_root = self.rootfs / "tmp"
        tmp_root.mkdir(exist_ok=True)
        job = Path(tempfile.mkdtemp(prefix="edgequant-job-", dir=tmp_root))
        try:
            models = []
            for i, p in enumerate(model_paths):
                p = Path(p)
                if not p.is_file():
                    raise EdgequantError(f"{p}: no such file")
                dest = job / f"model{i}" / p.name
                dest.parent.mkdir()
                shutil.copyfile(p, dest)
                for ext in _external_files(p):     # external weights travel with their model
                    shutil.copyfile(p.parent / ext, dest.parent / ext)
                models.append(str(dest.relative_to(job)))
            spec: dict[str, Any] = {"kind": kind, "models": models, "threads": max(1, self.session.intra_op_threads)}
            if inputs is not None:
                np.savez(job / "inputs.npz", **inputs)
                spec["inputs"] = "inputs.npz"
            (job / "job.json").write_text(json.dumps(spec))
            guest_job = "/" + str((job / "job.json").relative_to(self.rootfs))
            cmd = ["chroot", str(self.rootfs), f"{arm64_setup.VENV}/bin/python", arm64_setup.RUNNER, guest_job]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise EdgequantError(f"device arm64-emu: job timed out after {_TIMEOUT_S:.0f} s") from None
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                raise EdgequantError(f"{model_paths[0] if model_paths else '?'}: arm64-emu run failed: "
                                     f"{lines[-1][:300] if lines else f'exit {proc.returncode}'}")
            return job
        except BaseException:
            shutil.rmtree(job, ignore_errors=True)
            raise

    def iter_outputs(self, model_paths: Sequence[str | Path], samples: Iterable[Any],
                     outputs: Sequence[Sequence[str]] | None = None,
                     ) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
        """One emulated job for all samples (emulator start-up is paid once), then streamed back."""
        feeds_by_key: dict[str, np.ndarray] = {}
        labels = []
        for i, sample in enumerate(samples):
            feeds, label = feeds_of(sample)
            labels.append(label)
            feeds_by_key.update({f"s{i}__{k}": np.asarray(v) for k, v in feeds.items()})
        job = self._job("outputs", model_paths, feeds_by_key)
        try:
            meta = json.loads((job / "outputs.json").read_text())
            with np.load(job / "outputs.npz", allow_pickle=False) as npz:
                results = {k: npz[k] for k in npz.files}
        finally:
            shutil.rmtree(job, ignore_errors=True)
        names = meta["names"]
        for i, label in enumerate(labels):
            per_model = []
            for m, model_names in enumerate(names):
                values = {n: results[f"m{m}__s{i}__{k}"] for k, n in enumerate(model_names)}
                if outputs is not None:
                    values = {n: values[n] for n in outputs[m]}
                per_model.append(values)
            yield per_model, label

    def optimized_graph(self, model_path: str | Path) -> onnx.ModelProto:
        """The graph the arm64 build of onnxruntime runs (EXTENDED level: QDQ fusions, names kept)."""
        job = self._job("optimize", [model_path], None)
        try:
            return onnx.load(str(job / "optimized0.onnx"), load_external_data=False)
        finally:
            shutil.rmtree(job, ignore_errors=True)

    def coverage(self, model_path: str | Path) -> Coverage:
        return coverage_of_graph(self.optimized_graph(model_path))


def _external_files(path: Path) -> list[str]:
    """Relative locations of a model's external-data files."""
    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found.update(e.value for e in t.external_data if e.key == "location")
    return sorted(found)
