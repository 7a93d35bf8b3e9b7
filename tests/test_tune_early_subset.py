"""tune on an emulated device (the HTP simulator: ~1 s per BERT text) first measures a candidate on
every 4th evaluation sample, and stops there when that already puts it over budget; a candidate the
subset does not reject is measured on every sample, in the data's own order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgequant.devices.base import DeviceFacts
from edgequant.measure.fidelity import Collected
from edgequant.tune.trials import EARLY_MIN_SAMPLES, Reference, measure_quality
from edgequant.verdict import Budget

N, C = 480, 10


class _Samples(list):
    """An evaluation source: samples with a count, like data.open_source's."""

    synthetic = False

    @property
    def count(self) -> int:
        return len(self)


class _Emulated:
    """A slow device: each sample's logits, or (when ``wrong``) logits whose top-1 is shifted."""

    def __init__(self, logits: np.ndarray, wrong: bool, emulated: bool = True) -> None:
        self.logits, self.wrong, self.emulated, self.seen = logits, wrong, emulated, 0
        self.name = "sim"

    def facts(self) -> DeviceFacts:
        return DeviceFacts(self.name, "qnn-htp", True, "test", can_time=False, emulated=self.emulated)

    def outputs(self, paths, samples) -> Collected:
        idx = np.array([s["i"][0] for s in samples])
        self.seen += len(idx)
        out = np.roll(self.logits[idx], 1, axis=1) if self.wrong else self.logits[idx]
        return Collected(({"y": out},), None, len(idx))

    def placement(self, path):
        return None

    def coverage(self, path):
        from edgequant.measure.coverage import Coverage

        return Coverage(quantized_compute_ops=1, compute_ops=1, float_compute_nodes=(), op_counts={})


def _setup(n: int = N) -> tuple[np.ndarray, Reference, _Samples]:
    logits = np.random.default_rng(0).normal(0, 1, (n, C)).astype(np.float32)
    ref = Reference(Path("fp32.onnx"), {"y": logits}, None, None, None, None, {}, "fidelity", {"y": "classifier"}, {})
    return logits, ref, _Samples({"i": np.array([i])} for i in range(n))


def test_a_candidate_the_strided_quarter_rejects_is_not_run_on_the_rest() -> None:
    assert N >= EARLY_MIN_SAMPLES
    logits, ref, samples = _setup()
    device = _Emulated(logits, wrong=True)
    m = measure_quality(Path("q.onnx"), ref, samples, device, Budget())
    assert device.seen == N // 4
    assert m["fidelity"]["evaluated_subset"] == {"samples": N // 4, "of": N, "stride": 4}
    assert m["fidelity"]["top1_agreement"] < 0.5
    assert Budget().judge(None, None, m["fidelity"]).decision == "over"


def test_a_candidate_within_budget_is_measured_on_every_sample_in_order() -> None:
    logits, ref, samples = _setup()
    device = _Emulated(logits, wrong=False)
    m = measure_quality(Path("q.onnx"), ref, samples, device, Budget())
    assert device.seen == N and "evaluated_subset" not in m["fidelity"]
    assert m["fidelity"]["top1_agreement"] == 1.0 and m["fidelity"]["cosine"] > 0.9999   # order restored


def test_the_cpu_and_small_sets_are_always_measured_whole() -> None:
    logits, ref, samples = _setup()
    cpu = _Emulated(logits, wrong=True, emulated=False)
    assert "evaluated_subset" not in measure_quality(Path("q.onnx"), ref, samples, cpu, Budget())["fidelity"]
    assert cpu.seen == N
    logits, ref, small = _setup(EARLY_MIN_SAMPLES - 1)
    sim = _Emulated(logits, wrong=True)
    measure_quality(Path("q.onnx"), ref, small, sim, Budget())
    assert sim.seen == len(small)
