"""Honest verdicts: agreement proxies pass only when their 95% Wilson interval clears the threshold.

Hand-made counts (32/32 is undecided against 0.99; 990/1000 too; 999/1000 passes), the paired
interval of a task metric's drop, the recommendation never picking an undecided variant, and one
end-to-end run whose small evaluation set leaves the INT8 variants undecided.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.measure.fidelity import compare_outputs
from edgequant.measure.intervals import paired_drop_interval, paired_samples_needed, samples_needed, wilson
from edgequant.verdict import Budget, recommend


def _fid(key: str, successes: int, trials: int, cosine: float = 1.0) -> dict:
    return {"cosine": cosine, key: successes / trials,
            "intervals": {key: {"successes": successes, "trials": trials, "unit": "samples"}}}


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson(32, 32)
    assert lo == pytest.approx(0.8928, abs=1e-4) and hi == 1.0
    lo, hi = wilson(990, 1000)
    assert lo == pytest.approx(0.98169, abs=1e-4) and hi == pytest.approx(0.99456, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    # 1.0 observed: lower end n/(n + z^2) clears 0.99 from n = z^2 * 0.99 / 0.01 = 380.3
    assert samples_needed(1.0, 0.99) == 381
    assert samples_needed(0.99, 0.99) is None and samples_needed(0.95, 0.99) is None   # cannot at this rate
    n = samples_needed(0.995, 0.99)
    assert wilson(0.995 * n, n)[0] >= 0.99 > wilson(0.995 * (n - 1), n - 1)[0]


@pytest.mark.parametrize("successes, trials, decision, needed", [
    (32, 32, "undecided", 381),        # the case: zero flips allowed and still undecided
    (31, 32, "undecided", None),       # 0.969: interval 0.84-0.99 straddles, and no n would pass it
    (990, 1000, "undecided", None),    # exactly at the threshold: never decided in its favour
    (999, 1000, "within", None),       # lower end 0.9944
    (900, 1000, "over", None),         # upper end 0.917
    (20, 32, "over", None),
])
def test_agreement_decisions(successes: int, trials: int, decision: str, needed: int | None) -> None:
    j = Budget().judge(None, None, _fid("top1_agreement", successes, trials))
    assert j.decision == decision, j.why
    assert j.samples_needed == needed
    check = j.checks[0]
    assert check.ci95 == pytest.approx(wilson(successes, trials)) and check.trials == trials
    if decision == "undecided":
        assert "straddles 0.99" in j.why and j.verdict().startswith("undecided: evaluation set too small")
        assert ("needs >= 381 samples" in j.why) if needed else ("cannot pass" in j.why)
    assert Budget().check(None, None, _fid("top1_agreement", successes, trials))[0] == (decision == "within")


def test_outputs_equal_to_fp32s_are_within_budget_on_any_sample_count() -> None:
    """An exact rewrite (fp32-opt) reproduces every FP32 prediction: 32/32 with outputs equal to float
    rounding is within budget, the same 32/32 from a quantized model (SQNR 40 dB) stays undecided."""
    exact = {**_fid("top1_agreement", 32, 32), "sqnr_db": float("inf")}
    assert Budget().judge(None, None, exact).decision == "within"
    rounding = {**_fid("nn_agreement", 20, 20), "sqnr_db": 131.0, "mean_sample_cosine": 1.0}
    j = Budget().judge(None, None, rounding)
    assert j.decision == "within" and "float rounding" in j.why
    assert Budget().judge(None, None, {**_fid("top1_agreement", 32, 32), "sqnr_db": 40.0}).decision == "undecided"
    # a paired task-metric drop of 0 on 100 samples is undecided against 0.01 -- unless the outputs are FP32's
    accuracy = {"value": 0.99, "name": "acc", "higher_is_better": True, "paired": {"n": 100, "both": 99,
                                                                                     "only_ref": 0, "only_new": 0}}
    assert Budget(max_abs_drop=0.01).judge(accuracy, accuracy, {"cosine": 1.0, "sqnr_db": float("inf")}).within


def test_a_looser_max_drop_loosens_the_label_free_agreement_floor() -> None:
    """--max-drop 0.05 without labels: 5% of decisions may differ from FP32's (top-1 and nearest
    neighbour alike); an explicit min_agreement / min_nn_agreement still wins."""
    nn = {**_fid("nn_agreement", 975, 1000), "mean_sample_cosine": 0.995}
    assert Budget().judge(None, None, nn).decision == "over"
    loose = Budget(max_drop=0.05)
    assert loose.agreement == pytest.approx(0.95) and "nearest-neighbour agreement >= 0.95" in loose.describe()
    assert loose.judge(None, None, nn).decision == "within"
    assert loose.judge(None, None, _fid("top1_agreement", 975, 1000)).decision == "within"
    assert Budget(max_drop=0.05, min_nn_agreement=0.99).judge(None, None, nn).decision == "over"
    assert Budget(max_drop=0.05, min_agreement=0.99).judge(None, None, _fid("top1_agreement", 975, 1000)).decision \
        == "over"
    from edgequant.cli.options import run_options
    opts = run_options(target="auto", max_drop=0.05, max_abs_drop=None, threads=1, warmup=1, runs=2, metric=None,
                       preprocess=None, calib_limit=8, eval_limit=None)
    assert opts.budget.agreement == pytest.approx(0.95)


def test_without_counts_the_point_value_decides() -> None:
    """Old reports/caches (no counts) keep the point rule."""
    assert Budget().judge(None, None, {"cosine": 1.0, "top1_agreement": 1.0}).decision == "within"
    assert Budget().judge(None, None, {"cosine": 1.0, "top1_agreement": 0.98}).decision == "over"


def test_paired_drop_interval() -> None:
    # identical predictions on 32 samples: the drop could still be 10 points
    drop, lo, hi = paired_drop_interval(lost=0, gained=0, both=32, neither=0)
    assert drop == 0.0 and hi == pytest.approx(1 - wilson(32, 32)[0])
    assert paired_samples_needed(0, 0, 32, 0, 0.01) == 381
    # identical predictions on 1000 samples at 76% accuracy: decided within a 1% drop
    _, lo, hi = paired_drop_interval(0, 0, 760, 240)
    assert -0.01 < lo <= 0.0 <= hi < 0.01
    # 60 samples lost, 10 gained out of 1000: over any 1% budget
    drop, lo, hi = paired_drop_interval(60, 10, 700, 230)
    assert drop == pytest.approx(0.05) and lo > 0.01


def test_task_metric_drop_uses_the_paired_interval() -> None:
    fp32 = {"metric": "top1", "value": 1.0, "drop": 0.0}

    def acc(lost: int, gained: int, both: int, neither: int) -> dict:
        n = lost + gained + both + neither
        return {"metric": "top1", "value": (both + gained) / n, "drop": (lost - gained) / n,
                "details": {"paired": {"lost": lost, "gained": gained, "both": both, "neither": neither}}}

    j = Budget(max_drop=0.01).judge(fp32, acc(0, 0, 48, 0), {"cosine": 1.0})
    assert j.decision == "undecided" and j.samples_needed == 381
    assert Budget(max_drop=0.01).judge(fp32, acc(0, 0, 600, 0), {"cosine": 1.0}).decision == "within"
    assert Budget(max_drop=0.01).judge(fp32, acc(100, 0, 500, 0), {"cosine": 1.0}).decision == "over"
    # a metric without per-sample outcomes is judged on its value, as before
    assert Budget(max_abs_drop=0.01).judge({"value": 0.9}, {"metric": "m", "value": 0.895, "drop": 0.005},
                                           {}).decision == "within"


def test_builtin_top1_reports_paired_outcomes() -> None:
    from edgequant.measure.accuracy import top1

    ref = {"y": np.eye(4)[[0, 1, 2, 3]]}
    cand = {"y": np.eye(4)[[0, 1, 2, 0]]}
    labels = np.array([0, 1, 3, 0])
    r = top1(cand, labels, ref)
    # FP32 right on 0, 1; candidate right on 0, 1, 3
    assert r.details["paired"] == {"both": 2, "lost": 0, "gained": 1, "neither": 1}


def _variant(name: str, ratio: float, fid: dict):
    from edgequant.measure.fidelity import Fidelity
    from edgequant.measure.latency import LatencyStats, Speedup
    from edgequant.variant import Variant

    f = Fidelity.from_dict({"sqnr_db": 40.0, "max_abs_err": 0.01, "top1_agreement": None, **fid})
    lat = LatencyStats.from_samples([1.0 / ratio] * 5)
    return Variant(name, f"{name}.onnx", {"mode": name if name != "fp32" else "fp32"}, 1000, lat,
                   Speedup(ratio, ratio * 0.95, ratio * 1.05, 0.95, 1000), f)


def test_recommend_never_picks_an_undecided_variant() -> None:
    vs = [_variant("fp32", 1.0, {"cosine": 1.0}), _variant("static", 2.0, _fid("top1_agreement", 32, 32)),
          _variant("dynamic", 1.5, _fid("top1_agreement", 31, 32))]
    name, reason = recommend(vs, Budget())
    assert name == "fp32"
    assert "undecided, evaluation set too small: static, dynamic" in reason and ">= 381 samples" in reason
    assert vs[1].verdict.startswith("undecided: evaluation set too small") and not vs[1].within_budget
    d = vs[1].to_dict()
    assert d["budget_decision"] == "undecided" and d["samples_needed"] == 381
    assert d["budget_checks"][0]["ci95"][0] == pytest.approx(0.8928, abs=1e-4)
    # a variant with nothing quantized is not named among the undecided (its verdict says why it lost)
    from edgequant.measure.coverage import Coverage

    none_int8 = _variant("dynamic", 1.5, _fid("top1_agreement", 32, 32))
    none_int8.coverage = Coverage(0, 5, ["a"])
    name, reason = recommend([_variant("fp32", 1.0, {"cosine": 1.0}), none_int8], Budget())
    assert name == "fp32" and "undecided" not in reason and none_int8.verdict.startswith("nothing quantized")
    # with enough samples the same rate is decided and the faster variant wins
    vs = [_variant("fp32", 1.0, {"cosine": 1.0}), _variant("static", 2.0, _fid("top1_agreement", 400, 400))]
    assert recommend(vs, Budget())[0] == "static" and vs[1].to_dict()["budget_decision"] == "within"


def test_a_variant_ruled_out_on_a_subset_says_on_how_many_samples() -> None:
    """tune's early decision on an emulated device (a strided quarter) reaches the final verdict."""
    over = _variant("static", 2.0, {**_fid("top1_agreement", 60, 120),
                                    "evaluated_subset": {"samples": 120, "of": 480, "stride": 4}})
    name, _ = recommend([_variant("fp32", 1.0, {"cosine": 1.0}), over], Budget())
    assert name == "fp32" and over.to_dict()["budget_decision"] == "over"
    assert over.verdict.endswith("(on 120 of 480 evaluation samples, every 4th: enough to rule it out)")
    assert over.to_dict()["fidelity"]["evaluated_subset"] == {"samples": 120, "of": 480, "stride": 4}


def test_fidelity_counts_samples_not_positions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (6, 1, 20, 30))
    f = compare_outputs({"s": ref}, {"s": ref.copy()}, {"s": "sequence"})
    iv = f.to_dict()["intervals"]["top1_agreement"]
    assert iv["trials"] == 6 and iv["successes"] == 6 and "per-position" in iv["unit"]


def test_small_eval_set_is_undecided_end_to_end(tmp_path: Path) -> None:
    """`edgequant run` on 12 evaluation samples: INT8 can agree on all of them and still not be
    shown within a 0.99 budget; the report, the HTML and the terminal say so and what would decide it."""
    model = mlp(tmp_path / "cls.onnx", layers=2, classes=10)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (24, 1, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(0, 1, (12, 1, 16)).astype(np.float32))
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "edgequant", "run", str(model), "--calib", str(tmp_path / "calib.npz"),
                           "--eval", str(tmp_path / "eval.npz"), "-o", str(out), "--runs", "10", "--warmup", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    int8 = [v for v in report["variants"] if v["config"].get("mode") in ("dynamic", "static")]
    assert int8 and all(v["budget_decision"] in ("undecided", "over") for v in int8)
    undecided = [v for v in int8 if v["budget_decision"] == "undecided"]
    assert undecided, [v["verdict"] for v in int8]
    v = undecided[0]
    check = next(c for c in v["budget_checks"] if c["decision"] == "undecided")
    assert check["trials"] == 12 and check["ci95"][0] < 0.99 <= check["ci95"][1]
    assert report["recommended"] == "fp32" and "undecided" in report["recommendation_reason"]
    assert "undecided: evaluation set too small" in proc.stdout
    html = (out / "report.html").read_text()
    assert "Accuracy budget checks" in html and "undecided: evaluation set too small" in html
    from edgequant.report import read_report

    read_report(out / "report.json")   # still valid against the schema
