"""Output collection, fidelity metrics, top-1 agreement and task metrics."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.errors import EdgequantError
from edgequant.measure.accuracy import load_metric, top1
from edgequant.devices.cpu import CpuDevice
from edgequant.measure.fidelity import compare_outputs, top1_agreement


def collect(paths, samples):
    return CpuDevice().outputs(paths, samples)


def collect_outputs(path, samples):
    return collect([path], samples).outputs[0]
from edgequant.metrics import MetricResult


def test_identical_outputs() -> None:
    ref = {"y": np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], np.float32)}
    f = compare_outputs(ref, {"y": ref["y"].copy()})
    assert f.cosine == pytest.approx(1.0) and f.sqnr_db == float("inf") and f.max_abs_err == 0.0
    assert f.top1_agreement == 1.0
    assert set(f.to_dict()) == {"cosine", "sqnr_db", "max_abs_err", "top1_agreement", "intervals"}
    assert f.to_dict()["intervals"]["top1_agreement"]["trials"] == 2   # the samples behind the rate


def test_fidelity_comes_back_from_its_json_with_the_budget_s_counts() -> None:
    """tune keeps a candidate's fidelity as JSON; the final report rebuilds it from there, and the
    budget must judge the rebuilt record exactly as the measured one (intervals, subset)."""
    from edgequant.measure.fidelity import Fidelity
    from edgequant.verdict import Budget

    rng = np.random.default_rng(0)
    ref = {"y": rng.normal(size=(50, 10)).astype(np.float32)}
    cand = {"y": ref["y"] + rng.normal(0, 0.4, ref["y"].shape).astype(np.float32)}
    measured = compare_outputs(ref, cand, {"y": "classifier"})
    d = {**measured.to_dict(), "evaluated_subset": {"samples": 50, "of": 200, "stride": 4}}
    back = Fidelity.from_dict(d)
    assert back.to_dict() == d
    assert back.counts["top1_agreement"].trials == 50 and back.evaluated_subset["of"] == 200
    assert Budget().judge(None, None, back.to_dict()) == Budget().judge(None, None, d)


def test_perturbed_known_values() -> None:
    ref = {"a": np.array([3.0, 4.0]), "b": np.array([[1.0, 0.0], [0.0, 1.0]])}
    cand = {"a": np.array([3.0, 4.5]), "b": np.array([[0.0, 1.0], [0.0, 1.0]])}
    f = compare_outputs(ref, cand)
    # a: signal 25, noise 0.25 -> 20 dB; b: signal 2, noise 2 -> 0 dB (worst)
    assert f.per_output["a"].sqnr_db == pytest.approx(20.0)
    assert f.sqnr_db == pytest.approx(0.0)
    assert f.per_output["a"].cosine == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))
    assert f.cosine == pytest.approx(f.per_output["b"].cosine) and f.cosine == pytest.approx(0.5)
    assert f.max_abs_err == pytest.approx(1.0)
    assert f.per_output["a"].top1_agreement is None          # 1-D: not classifier-like
    assert f.top1_agreement == pytest.approx(0.5)             # b: 2-D [N, C]


def test_top1_agreement_shapes() -> None:
    ref = np.array([[[0.1, 0.9]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])  # [N, 1, C]
    cand = ref.copy()
    cand[0, 0] = [0.9, 0.1]
    assert top1_agreement(ref, cand) == pytest.approx(0.75)
    assert top1_agreement(np.ones((4, 1)), np.ones((4, 1))) is None          # C == 1
    assert top1_agreement(np.ones((4, 2, 3)), np.ones((4, 2, 3))) is None    # not [N, 1, C]


def test_compare_errors() -> None:
    with pytest.raises(EdgequantError, match="lacks output"):
        compare_outputs({"y": np.ones(2)}, {"z": np.ones(2)})
    with pytest.raises(EdgequantError, match="shape"):
        compare_outputs({"y": np.ones(2)}, {"y": np.ones(3)})


def test_collect_stacks_runs_on_new_axis(tmp_path: Path) -> None:
    a = mlp(tmp_path / "a.onnx", classes=5, seed=0)
    b = mlp(tmp_path / "b.onnx", classes=5, seed=0)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(6)]
    out = collect_outputs(a, samples)
    assert out["y"].shape == (6, 1, 5)
    both = collect([a, b], iter(samples))          # one pass over a stream
    assert both.count == 6 and both.labels is None
    f = compare_outputs(both.outputs[0], both.outputs[1])
    assert f.cosine == pytest.approx(1.0) and f.top1_agreement == 1.0


class _Sample:
    def __init__(self, feeds: dict, label: np.ndarray | None) -> None:
        self.feeds, self.label, self.origin = feeds, label, "test"


def test_collect_labels_and_top1(tmp_path: Path) -> None:
    a = mlp(tmp_path / "a.onnx", classes=3)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(8)]
    ys = [int(np.argmax(collect_outputs(a, [{"x": x}])["y"])) for x in xs]
    ys[0] = (ys[0] + 1) % 3                                   # one wrong label
    got = collect([a], [_Sample({"x": x}, np.array(y)) for x, y in zip(xs, ys)])
    assert got.labels.shape == (8,)
    r = top1(got.outputs[0], got.labels, None)
    assert r.value == pytest.approx(7 / 8) and r.higher_is_better and r.name == "top1"
    onehot = np.eye(3)[got.labels][:, None, :]              # [N, 1, C] one-hot labels
    assert top1(got.outputs[0], onehot, None).value == pytest.approx(7 / 8)
    with pytest.raises(EdgequantError, match="needs labels"):
        top1(got.outputs[0], None, None)
    with pytest.raises(EdgequantError, match="no classifier-like"):
        top1({"y": np.ones((8, 1))}, got.labels, None)


def test_load_metric_builtin_and_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_metric("top1") is top1
    (tmp_path / "eq_user_metrics.py").write_text(textwrap.dedent("""
        import numpy as np
        from edgequant.metrics import MetricResult

        def px_error(outputs, labels, reference):
            return float(np.abs(outputs["y"] - labels).mean()), False

        def full(outputs, labels, reference):
            return MetricResult("full", 1.0, True)

        def bad_return(outputs, labels, reference):
            return "oops"

        def crashes(outputs, labels, reference):
            raise ZeroDivisionError("boom")

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_metric("eq_user_metrics:px_error")
    r = m({"y": np.array([1.0, 3.0])}, np.array([0.0, 0.0]), None)
    assert r == MetricResult("px_error", 2.0, False)
    assert load_metric("eq_user_metrics:full")({}, None, None).name == "full"
    by_file = load_metric(f"{tmp_path / 'eq_user_metrics.py'}:px_error")
    assert by_file({"y": np.array([2.0])}, np.array([0.0]), None).value == 2.0
    for spec, msg in [("nosuchmodule_xyz:f", "cannot import module"), ("eq_user_metrics:missing", "no attribute"),
                      ("eq_user_metrics:NOT_CALLABLE", "not callable"), ("justaname", "module:function"),
                      (f"{tmp_path / 'nope.py'}:f", "no such file")]:
        with pytest.raises(EdgequantError, match=msg):
            load_metric(spec)
    with pytest.raises(EdgequantError, match="expected MetricResult"):
        load_metric("eq_user_metrics:bad_return")({}, None, None)
    with pytest.raises(EdgequantError, match="ZeroDivisionError: boom"):
        load_metric("eq_user_metrics:crashes")({}, None, None)
