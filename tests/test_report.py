import copy
import json

import pytest

from edgequant.errors import EdgequantError
from edgequant.measure.coverage import Coverage
from edgequant.measure.fidelity import Fidelity
from edgequant.measure.latency import LatencyStats, Speedup
from edgequant.measure.memory import MemoryResult
from edgequant.variant import Variant
from edgequant.verdict import Budget, recommend
from edgequant.report import read_report, validate_report, write_report


def _variant(name, speedup, ci, *, cosine=0.999, agree=None, acc=None, cov=None):
    samples = [2.0 / speedup] * 5
    return Variant(
        name=name, path=f"/m/{name}.onnx", config={"mode": name}, size_bytes=1000,
        latency=LatencyStats.from_samples(samples), speed=Speedup(speedup, ci[0], ci[1], 0.95, 1000),
        fidelity=Fidelity(cosine=cosine, sqnr_db=30.0, max_abs_err=0.1, top1_agreement=agree),
        accuracy=acc, coverage=Coverage(cov["quantized_compute_ops"], cov["compute_ops"], []) if cov else None,
        memory=MemoryResult(50.0, 40.0, 10.0))


def _report(variants):
    return {"schema": "edgequant.report/1",
            "machine": {"cpu": "test cpu", "isa": ["avx2"], "onnxruntime": "1.32.0", "threads": 1},
            "model": {"path": "/m/<b>evil</b>.onnx", "sha256": "a" * 64, "opset": 13},
            "variants": [v.to_dict() if isinstance(v, Variant) else v for v in variants], "recommended": "fp32"}


def test_recommends_fastest_within_budget():
    vs = [_variant("fp32", 1.0, (1.0, 1.0)), _variant("dynamic", 1.3, (1.2, 1.4)), _variant("static", 1.8, (1.7, 1.9))]
    assert recommend(vs, Budget())[0] == "static"


def test_over_budget_variant_is_never_recommended_even_if_fastest():
    acc = lambda v, d: {"metric": "top1", "value": v, "drop": d}  # noqa: E731
    vs = [_variant("fp32", 1.0, (1.0, 1.0), acc=acc(0.90, 0.0)),
          _variant("dynamic", 1.3, (1.2, 1.4), acc=acc(0.899, 0.001)),
          _variant("static", 1.8, (1.7, 1.9), acc=acc(0.80, 0.10))]
    name, _ = recommend(vs, Budget(max_drop=0.01))
    assert name == "dynamic"
    assert vs[2].verdict.startswith("over budget")


def test_fp32_fallback_when_nothing_is_faster_beyond_noise():
    vs = [_variant("fp32", 1.0, (1.0, 1.0)), _variant("dynamic", 1.02, (0.97, 1.06)),
          _variant("static", 0.6, (0.55, 0.65), cov={"quantized_compute_ops": 3, "compute_ops": 20})]
    name, reason = recommend(vs, Budget())
    assert name == "fp32" and "faster than FP32 beyond noise" in reason
    assert "not faster than FP32 beyond noise" in vs[1].verdict
    assert "slower than FP32" in vs[2].verdict and "3/20" in vs[2].verdict


def test_when_fp32_opt_wins_the_report_says_by_how_much_int8_falls_short_and_where_its_time_goes():
    fp32, opt = _variant("fp32", 1.0, (1.0, 1.0)), _variant("fp32-opt", 1.37, (1.33, 1.41))
    static = _variant("static", 1.12, (1.08, 1.16), cov={"quantized_compute_ops": 45, "compute_ops": 45})
    dynamic = _variant("dynamic", 1.01, (0.97, 1.05), cov={"quantized_compute_ops": 2, "compute_ops": 45})
    opt.profile_us_by_op = {"FusedConv": 1500.0, "Add": 300.0, "ReorderInput": 100.0}
    static.profile_us_by_op = {"QLinearConv": 1000.0, "QLinearMul": 700.0, "DequantizeLinear": 460.0,
                               "QuantizeLinear": 370.0, "Sub": 200.0}
    name, reason = recommend([fp32, opt, static, dynamic], Budget())
    assert name == "fp32-opt"
    # the fastest INT8 within budget, by how much it falls short of fp32-opt, and the op classes why
    assert "static" in reason and "falls short of it by 18%" in reason
    assert "kernel time 2.73 vs 1.90 ms/run" in static.verdict
    assert "quantize/dequantize +0.83 ms" in static.verdict and "convolution -0.50 ms" in static.verdict
    # an INT8 variant within budget but not faster than FP32 is set against fp32-opt as well
    assert dynamic.verdict.startswith("within budget and 1.01x FP32, but fp32-opt is faster")


def test_budget_without_labels_uses_agreement_then_cosine():
    b = Budget()
    assert b.check(None, None, {"top1_agreement": 0.995, "cosine": 0.5})[0]
    assert not b.check(None, None, {"top1_agreement": 0.9, "cosine": 1.0})[0]
    assert not b.check(None, None, {"top1_agreement": None, "cosine": 0.98})[0]
    # absolute budget in metric units (e.g. detector accuracy points)
    assert Budget(max_abs_drop=0.01).check({"value": 0.99}, {"metric": "acc", "value": 0.985, "drop": 0.005}, {})[0]
    assert not Budget(max_abs_drop=0.01).check({"value": 0.99}, {"metric": "acc", "value": 0.9, "drop": 0.09}, {})[0]


def test_schema_rejects_missing_keys():
    rep = _report([_variant("fp32", 1.0, (1, 1))])
    validate_report(rep)
    broken = copy.deepcopy(rep)
    del broken["variants"][0]["fidelity"]
    with pytest.raises(EdgequantError, match="variants/0"):
        validate_report(broken)
    broken = copy.deepcopy(rep)
    broken["model"]["sha256"] = "xyz"
    with pytest.raises(EdgequantError, match="sha256"):
        validate_report(broken)


def test_write_report_json_and_html(tmp_path):
    vs = [_variant("fp32", 1.0, (1, 1)), _variant("dyn<script>", 1.3, (1.2, 1.4)),
          _variant("static", 1.8, (1.7, 1.9), acc=None)]
    rep = _report(vs)
    rep["variants"][0]["fidelity"]["sqnr_db"] = float("inf")
    rep["recommended"] = "static"
    json_path, html_path = write_report(tmp_path, rep)
    loaded = read_report(json_path)
    assert loaded["variants"][0]["fidelity"]["sqnr_db"] == 200.0  # inf is not JSON
    json.loads(json_path.read_text())  # strict JSON
    html = html_path.read_text()
    for name in ("fp32", "static"):
        assert f"<b>{name}</b>" in html
    assert "dyn&lt;script&gt;" in html and "<script>" not in html  # escaped
    assert "&lt;b&gt;evil&lt;/b&gt;.onnx" in html
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # opens offline: nothing external
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_variant_with_nothing_quantized_is_not_recommended():
    vs = [_variant("fp32", 1.0, (1.0, 1.0)),
          _variant("dynamic", 1.1, (1.06, 1.12), cov={"quantized_compute_ops": 0, "compute_ops": 37})]
    assert recommend(vs, Budget())[0] == "fp32"
    assert vs[1].verdict.startswith("nothing quantized")


def test_tiny_speedups_are_not_worth_int8():
    vs = [_variant("fp32", 1.0, (1.0, 1.0)), _variant("static", 1.03, (1.01, 1.05))]
    assert recommend(vs, Budget(), min_speedup=1.05)[0] == "fp32"
    assert recommend(vs, Budget(), min_speedup=1.0)[0] == "static"


def test_accelerator_verdicts_need_full_int8_on_the_device():
    """On a simulated NPU speed is not judged, but CPU fallback and float layers disqualify."""
    fp32 = _variant("fp32", 1.0, (1.0, 1.0))
    partly = _variant("dynamic", 0.9, (0.8, 1.0), cosine=0.9999, cov={"quantized_compute_ops": 1, "compute_ops": 4})
    fallback = _variant("static-a", 0.5, (0.4, 0.6), cosine=0.999, cov={"quantized_compute_ops": 4, "compute_ops": 4})
    fallback.placement = {"accelerator": 30, "cpu_fallback": 1, "cpu_fallback_nodes": ["conv3 (Conv)"],
                          "io_on_cpu": 2, "compute_on_cpu": 1}
    full_lo = _variant("static", 0.5, (0.4, 0.6), cosine=0.995, cov={"quantized_compute_ops": 4, "compute_ops": 4})
    full_hi = _variant("static-16", 0.4, (0.3, 0.5), cosine=0.9995, cov={"quantized_compute_ops": 4, "compute_ops": 4})
    for v in (fallback, full_lo, full_hi):
        v.config["mode"] = "static"
    rewrite = _variant("fp32-opt", 1.4, (1.3, 1.5), cosine=1.0)              # an FP32 speed rewrite
    vs = [fp32, rewrite, partly, fallback, full_lo, full_hi]
    name, reason = recommend(vs, Budget(), judge_speed=False, device="qnn-htp")
    assert "cannot measure" in rewrite.verdict                               # its only gain is unmeasurable
    assert name == "static-16" and "latency not measured" in reason       # most accurate, slow on the host CPU
    assert partly.verdict.startswith("partly float on qnn-htp: 1/4")
    assert fallback.verdict.startswith("not deployable on qnn-htp: 1 operator(s) fall back") and "conv3" in fallback.verdict
    # the same variants judged on a CPU: nothing is faster, so FP32
    assert recommend([fp32, full_lo], Budget())[0] == "fp32"
