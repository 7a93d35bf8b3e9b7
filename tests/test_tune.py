"""`tune`: the sensitive node goes to float, impossible budgets end in fp32 + QAT advice, re-runs resume.

Timings are never asserted (2 noisy cores); only that the pick is never over budget or slower.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


from edgequant.cli import main
from edgequant.pipeline import Budget, RunOptions
from edgequant.tune import TuneOptions, run_tune
from edgequant import jobs as jobs_mod

FAST = RunOptions(target="x86-avx2", runs=20, warmup=2, memory_runs=2)


def _options(**kw) -> TuneOptions:
    run = kw.pop("run", FAST)
    return TuneOptions(run=run, trial_runs=10, trial_warmup=1, workers=kw.pop("workers", 1), **kw)



def _check_pick_is_honest(report: dict) -> None:
    rec = report["recommended"]
    if rec != "fp32":
        v = next(v for v in report["variants"] if v["name"] == rec)
        assert v["within_budget"] and v["speedup_ci"][0] > 1.0


def test_tune_keeps_the_sensitive_node_float(sensitive, tmp_path: Path) -> None:
    model, calib, evals = sensitive
    out = tmp_path / "out"
    messages: list[str] = []
    report = run_tune(model, out, calib=str(calib), eval_spec=str(evals), options=_options(workers=2),
                      progress=messages.append)
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "report.json").read_text())["recommended"] == report["recommended"]
    assert messages and any("quantizing" in m for m in messages)

    trace = {row["name"]: row for row in report["search_trace"]}
    assert not trace["static"]["within_budget"]                # ORT defaults destroy mm2
    assert report["tune"]["sensitivity"]["ranked"][0]["name"].startswith("mm2")
    passing = [r for r in report["search_trace"] if r["within_budget"] and r["float_nodes"]]
    assert passing, report["search_trace"]
    best = passing[0]
    # mm2 plus the one neighbour ORT needs float to honour it; the rest stays INT8
    assert sorted(n.split("/")[0] for n in best["float_nodes"]) == ["mm1", "mm2"]
    assert best["coverage"]["quantized_compute_ops"] == 2
    assert "mm2" in best["recipe_summary"] and best["recipe"]["exclude"] == best["float_nodes"]

    # a within-budget fallback is re-measured in the final table even when it loses on speed (with two
    # workers, sizes 1 and 2 are tried side by side: the faster of the passing ones may be the one kept)
    assert {r["name"] for r in passing} & {v["name"] for v in report["variants"]}
    _check_pick_is_honest(report)
    if report["recommended"] != "fp32":
        assert "kept in float" in report["recommendation_reason"] and "mm2" in report["recommendation_reason"]
    assert report["pareto_plot"].startswith("data:image/png;base64,")
    html = (out / "report.html").read_text()
    assert "Search trace" in html and "Method advice" in html
    assert "QAT" in report["advice"]  # the seed's rule is always cited


def test_impossible_budget_gives_fp32_and_qat_advice(sensitive, tmp_path: Path) -> None:
    model, calib, evals = sensitive
    run = RunOptions(target="x86-avx2", runs=10, warmup=1, measure_memory=True, memory_runs=2,
                     budget=Budget(max_abs_drop=-1.0))  # even FP32 itself would not meet it
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(run=run, max_candidates=8))
    assert report["recommended"] == "fp32"
    assert not any(r["within_budget"] for r in report["search_trace"])
    assert "No post-training candidate that runs INT8 met" in report["advice"] and "QAT" in report["advice"]
    assert len(report["search_trace"]) <= 8


def test_time_budget_stops_gracefully(sensitive, tmp_path: Path) -> None:
    model, calib, evals = sensitive
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(time_budget_min=0.0))
    assert report["recommended"] == "fp32" and report["search_trace"] == []
    assert report["tune"]["stopped"].startswith("time budget")
    assert any("stopped early" in n for n in report["notes"])


def test_rerun_resumes_from_cache(sensitive, tmp_path: Path, monkeypatch) -> None:
    model, calib, evals = sensitive
    out = tmp_path / "out"
    first = run_tune(model, out, calib=str(calib), eval_spec=str(evals), options=_options())
    assert first["tune"]["quantized_now"] == first["tune"]["candidates"] > 2
    cached = sorted((out / ".tune-cache").glob("*/model.onnx"))
    mtimes = {p: p.stat().st_mtime_ns for p in cached}

    calls: list[str] = []
    real = jobs_mod.quantize_model
    monkeypatch.setattr(jobs_mod, "quantize_model", lambda *a, **k: calls.append(str(a[1])) or real(*a, **k))
    second = run_tune(model, out, calib=str(calib), eval_spec=str(evals), options=_options())
    assert calls == []
    assert second["tune"]["quantized_now"] == 0
    assert second["tune"]["from_cache"] == second["tune"]["candidates"] == first["tune"]["candidates"]
    assert all("(cached)" in r["outcome"] for r in second["search_trace"] if r["within_budget"] is not None)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    assert [r["name"] for r in second["search_trace"]] == [r["name"] for r in first["search_trace"]]

    # another edgequant (or onnxruntime, or machine) does not reuse this one's candidates
    from edgequant import provenance

    monkeypatch.setattr(provenance, "tool_fingerprint", lambda: "another edgequant")
    third = run_tune(model, out, calib=str(calib), eval_spec=str(evals), options=_options())
    assert third["tune"]["from_cache"] == 0 and third["tune"]["quantized_now"] == third["tune"]["candidates"]


def test_a_second_tune_on_the_same_folder_is_refused_while_the_first_runs(sensitive, tmp_path: Path, capsys) -> None:
    """Two tunes writing one cache would replace each other's candidates (a model file vanished under
    a running search once); the second is refused in one line, and the folder is free again after."""
    import subprocess
    import sys

    model, calib, evals = sensitive
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom edgequant.tune.cache import exclusive\n"
                               "with exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["tune", str(model), "--calib", str(calib), "--eval", str(evals), "-o", str(out), "--runs", "5",
                   "--trial-runs", "5", "--warmup", "1", "--workers", "1", "--max-candidates", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1
        assert str(out) in err[0] and f"another edgequant tune is writing to this folder (pid {holder.pid})" in err[0]
        assert not (out / "report.json").exists()
    finally:
        holder.kill()
        holder.wait()
    report = run_tune(model, out, calib=str(calib), eval_spec=str(evals), options=_options(max_candidates=2))
    assert (out / "report.json").is_file() and report["recommended"]


def test_cli_tune(sensitive, tmp_path: Path, capsys, monkeypatch) -> None:
    from edgequant.devices.cpu import CpuDevice

    bursts: list[int] = []
    timed = CpuDevice.time_interleaved

    def spy(self, *args, **kwargs):
        bursts.append(kwargs.get("burst", 1))
        return timed(self, *args, **kwargs)

    monkeypatch.setattr(CpuDevice, "time_interleaved", spy)
    model, calib, evals = sensitive
    out = tmp_path / "cli"
    rc = main(["tune", str(model), "--calib", str(calib), "--eval", str(evals), "-o", str(out), "--runs", "5",
               "--trial-runs", "5", "--warmup", "1", "--workers", "1", "--target", "x86-avx2",
               "--max-candidates", "3", "--burst", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "search trace" in text and "recommended:" in text and "advice:" in text
    # the deployment's regime (steady state: 3 runs in a row) times the trials and the final report alike
    assert len(bursts) >= 2 and set(bursts) == {3}
    report = json.loads((out / "report.json").read_text())
    assert report["measurement"]["burst"] == 3
    assert "3 runs in a row per round" in (out / "report.html").read_text()
    assert main(["tune", str(tmp_path / "missing.onnx"), "--calib", str(calib), "--eval", str(evals)]) != 0
    assert "missing.onnx" in capsys.readouterr().err


def test_no_float_fallback_keeps_every_layer_int8_or_says_so(sensitive, tmp_path: Path) -> None:
    """--no-float-fallback: the same model whose only remedy above is float mm1/mm2 gets no
    float candidate at all; the report says fully INT8 could not be done."""
    model, calib, evals = sensitive
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(float_fallback=False, max_candidates=10))
    assert report["search_trace"] and not any(r["float_nodes"] for r in report["search_trace"])
    assert not any(r["stage"] == "fallback" for r in report["search_trace"])
    assert report["tune"]["float_fallback"] is False
    assert any("no fully INT8 candidate met the budget" in n for n in report["notes"])
    _check_pick_is_honest(report)


def test_cli_no_float_fallback_flag(sensitive, tmp_path: Path, capsys) -> None:
    model, calib, evals = sensitive
    out = tmp_path / "cli"
    code = main(["tune", str(model), "--calib", str(calib), "--eval", str(evals), "-o", str(out),
                 "--target", "x86-avx2", "--runs", "5", "--trial-runs", "4", "--warmup", "1", "--workers", "1",
                 "--max-candidates", "6", "--no-float-fallback"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tune"]["float_fallback"] is False
    assert not any(r["float_nodes"] for r in report["search_trace"])


def test_qat_is_the_last_fully_int8_step_before_giving_up(sensitive, tmp_path: Path) -> None:
    """--no-float-fallback on a model no post-training step fixes: tune trains a QAT candidate from
    the best static recipe (the qat extra is installed by `make test`) and measures it like the rest."""
    pytest.importorskip("torch")
    model, calib, evals = sensitive
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(float_fallback=False, max_candidates=24, qat_minutes=1.0))
    stages = [r["stage"] for r in report["search_trace"]]
    assert "qat" in stages and stages.index("qat") > stages.index("learned rounding"), stages
    qat = next(r for r in report["search_trace"] if r["stage"] == "qat")
    assert not qat["outcome"].startswith("failed") and qat["fidelity"] is not None, qat["outcome"]
    assert "QAT" in qat["recipe_summary"] and not qat["float_nodes"] and qat["recipe"]["qat_minutes"] == 1.0
    static = next(r for r in report["search_trace"] if r["name"] == "static")
    assert qat["fidelity"]["sqnr_db"] > static["fidelity"]["sqnr_db"] + 3.0, (qat["fidelity"], static["fidelity"])
    _check_pick_is_honest(report)


def test_calibration_variants_quantize_while_the_sensitivity_analysis_runs(sensitive, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """With quantization out of this process, the calibration stage's candidates (which need no
    sensitivity ranking) are already quantizing when the analysis starts; none is quantized twice."""
    import threading

    import edgequant.sensitivity_bodies as sensitivity

    model, calib, evals = sensitive
    calibration_started = threading.Event()
    seen: list[str] = []

    def quantizer(jobs, workers, *, timeout_s=None):
        if any(j.config.calib_method == "percentile" for j in jobs):
            calibration_started.set()
        seen.extend(str(j.out_path) for j in jobs)
        return jobs_mod.quantize_batch(jobs, workers, timeout_s=timeout_s)

    overlapped = []
    real = sensitivity.analyze_model_with_bodies

    def analyze(*args, **kwargs):
        overlapped.append(calibration_started.wait(timeout=60))   # only set by a concurrent batch
        return real(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "analyze_model_with_bodies", analyze)
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(workers=2, quantizer=quantizer))
    assert overlapped == [True]
    assert len(seen) == len(set(seen))                 # started ahead, picked up, not quantized again
    assert "static-pct99.999" in {r["name"] for r in report["search_trace"]}


@pytest.mark.parametrize("shares_slots", [True, False])
def test_range_recipes_start_while_the_calibration_batch_runs_where_batches_share_slots(
        sensitive, tmp_path: Path, shares_slots: bool, monkeypatch) -> None:
    """Once the sensitivity ranking exists, its range recipes join the cluster's queue at once on a
    quantizer whose batches share one concurrency limit (Ray's), instead of waiting for the slowest
    calibration recipe; a quantizer without that (worker processes) never gets a second batch."""
    import threading

    model, calib, evals = sensitive
    batches: list[list[str]] = []
    third_started = threading.Event()
    overlapped: list[bool] = []

    def quantizer(jobs, workers, *, timeout_s=None):
        batches.append([str(j.out_path) for j in jobs])
        n = len(batches)
        if n == 3:
            third_started.set()
        if any(j.config.calib_method == "percentile" for j in jobs):   # the calibration batch
            overlapped.append(third_started.wait(timeout=20 if shares_slots else 2))
        return jobs_mod.quantize_batch(jobs, 1, timeout_s=timeout_s)

    if shares_slots:
        quantizer.shares_slots = True
    # this MLP's ranges are not outlier-dominated: a 16-bit recipe on the ranked node stands in
    import edgequant.tune.search as search_mod
    from dataclasses import replace as dc_replace

    monkeypatch.setattr(search_mod, "range_recipes", lambda sens, base: [dc_replace(
        base, name="static-int16-ranges", stage="ranges", why="test", int16_tensors=(sens.nodes[0].outputs[0],))])
    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(workers=2, quantizer=quantizer))
    names = {r["name"]: r for r in report["search_trace"]}
    ranged = [n for n, r in names.items() if r["stage"] == "ranges"]
    assert ranged == ["static-int16-ranges"]
    assert overlapped == [shares_slots]
    flat = [p for b in batches for p in b]
    assert len(flat) == len(set(flat))                  # nothing quantized twice
    assert not any(names[n]["outcome"].startswith("failed") for n in ranged)


def test_slow_stage_share_keeps_time_for_the_fallback() -> None:
    from edgequant.tune.search import FALLBACK_RESERVE_TRIALS, slow_stage_share

    assert slow_stage_share(100.0, 5.0, True) == (100.0 - FALLBACK_RESERVE_TRIALS * 5.0, FALLBACK_RESERVE_TRIALS * 5.0)
    assert slow_stage_share(20.0, 30.0, True) == (10.0, 10.0)       # never more than half of what is left
    assert slow_stage_share(100.0, 5.0, False) == (100.0, 0.0)      # no fallback stage after it: all of it
    assert slow_stage_share(100.0, None, True) == (100.0, 0.0)      # no pace seen yet: nothing to size it by


def test_a_slow_stage_that_runs_out_of_time_leaves_the_fallback_its_share(sensitive, tmp_path: Path) -> None:
    """Under a time budget, AdaRound may quantize only until the fallback's share begins (no grace past
    it): here it never finishes, and the float fallback still finds the within-budget candidate."""
    import time

    model, calib, evals = sensitive
    budget_s = 120.0
    started = time.monotonic()
    rounding: list[tuple[float | None, float]] = []

    def quantizer(jobs, workers, *, timeout_s=None):
        if any(j.config.adaround for j in jobs):   # a stage that would outlast the budget
            rounding.append((timeout_s, started + budget_s - time.monotonic()))
            return [jobs_mod.timed_out(timeout_s or 0.0) for _ in jobs]
        return jobs_mod.quantize_batch(jobs, 1, timeout_s=timeout_s)

    report = run_tune(model, tmp_path / "out", calib=str(calib), eval_spec=str(evals),
                      options=_options(quantizer=quantizer, time_budget_min=budget_s / 60, qat_minutes=0))
    assert len(rounding) == 1, rounding
    timeout_s, left_s = rounding[0]
    assert timeout_s is not None and timeout_s < left_s, rounding     # not the budget's rest (+ grace)
    assert any(n.startswith("learned rounding:") and "kept for the float-fallback stage" in n
               for n in report["notes"]), report["notes"]
    stages = [r["stage"] for r in report["search_trace"]]
    assert stages.index("fallback") > stages.index("learned rounding"), stages
    stopped = [r["outcome"] for r in report["search_trace"] if r["stage"] == "learned rounding"]
    assert stopped and all(o.startswith("not finished: the time budget ran out") for o in stopped), stopped
    assert any(r["within_budget"] and r["stage"] == "fallback" for r in report["search_trace"])
    _check_pick_is_honest(report)


def test_a_slow_stage_too_short_for_its_minimum_is_skipped_with_one_note() -> None:
    """QAT needs two minutes (a minute of training, one kept for the final measurement): with less in
    its share it is skipped and says why once; learned rounding runs in what is left minus the reserve."""
    import time
    from types import SimpleNamespace

    from edgequant.tune.search import Search

    search = Search(SimpleNamespace(workers=1), "x86-avx2", lambda trial: None, deadline=time.monotonic() + 100.0)
    search._batch_pace = [5.0]
    search.state.sensitivity = SimpleNamespace(nodes=["mm2"])     # a fallback stage follows
    assert search._slow_stage_window("QAT", min_s=120.0) == (False, None)
    runs, until = search._slow_stage_window("learned rounding")
    assert runs and until is not None and 70.0 < until - time.monotonic() <= 80.0    # 100 s less 4 x 5 s
    assert [n.split(":")[0].split(" skipped")[0] for n in search.state.notes] == ["QAT", "learned rounding"]
    assert search.state.notes[0].startswith("QAT skipped: ") and "kept for the float-fallback" in search.state.notes[0]
    search.state.sensitivity = None                                 # nothing after it: the whole rest
    assert search._slow_stage_window("learned rounding") == (True, None)


def test_with_nothing_within_budget_the_final_report_shows_the_closest_candidate() -> None:
    """On HTP both defaults and every variant may miss the budget: besides the static default, the
    final measurement then shows the most accurate candidate tried (A16W8 on the HF BERT), not only
    the static default the advice calls far off."""
    from edgequant.tune import _finalists
    from edgequant.tune.recipes import Recipe
    from edgequant.tune.search import SearchState
    from edgequant.tune.trials import Trial

    def trial(name: str, cosine: float, within: bool = False) -> Trial:
        return Trial(Recipe(name, "static"), {"name": name}, fidelity={"cosine": cosine}, within_budget=within)

    state = SearchState([trial("static", 0.66), trial("static-a16w8", 0.9993), trial("static-pct99.99", 0.75)])
    assert [t.name for t in _finalists(state, 3, judge_speed=False)] == ["static", "static-a16w8"]
    state.trials.append(trial("static-a16w8+gptq", 0.9999, within=True))    # within budget: that one instead
    assert [t.name for t in _finalists(state, 3, judge_speed=False)] == ["static", "static-a16w8+gptq"]
