"""`tune`: the fastest INT8 model within the accuracy budget, found by measurement.

Public API (used by the CLI and ``fleet``)::

    from edgequant.tune import TuneOptions, run_tune
    report = run_tune(model, out_dir, calib="calib.npz", eval_spec="eval.npz",
                      options=TuneOptions(run=RunOptions(...), time_budget_min=10), progress=print)

Flow: FP32 reference on the eval data -> search (see :mod:`edgequant.tune.search`: defaults,
diagnosis, calibration/range variants, greedy float fallback of the most sensitive nodes) with
short interleaved trials -> FP32 and the best few candidates re-measured together with full
runs and fresh-process memory -> report.json/html with the search trace, a Pareto plot and
method advice. The result is never slower than FP32 or over budget: otherwise it is "fp32".
Nothing here prints; ``progress`` receives one-line status messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import model as model_io
from .. import provenance
from ..errors import EdgequantError
from ..pipeline import (
    Candidate,
    KnownQuality,
    RunOptions,
    build_report,
    fp32_rewrite_candidate,
    measure_candidates,
    open_run,
)
from .cache import TuneCache, exclusive
from .recipes import Recipe
from .search import Search, SearchState
from ..jobs import CalibSpec, quiet_logging
from .trials import Reference, Trial, TrialRunner, make_reference

__all__ = ["Recipe", "TuneOptions", "run_tune"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TuneOptions:
    """Search settings on top of the run options (budget, target, session, final measurement)."""

    run: RunOptions = field(default_factory=RunOptions)
    time_budget_min: float | None = None
    trial_runs: int = 30               # interleaved rounds per trial batch (final report: run.runs)
    trial_warmup: int = 3
    workers: int = 2                   # quantization processes (timing always runs here, sequentially)
    max_candidates: int = 24
    finalists: int = 3                 # best within-budget candidates re-measured for the report
    sensitivity_samples: int = 16
    # None: the target decides (qnn: no float layers, 16-bit instead); False: fully INT8 or say so
    float_fallback: bool | None = None
    # QAT (edgequant[qat]) when every post-training step missed the budget: training minutes, 0 = never
    qat_minutes: float = 10.0
    # where candidates are quantized: None = here (up to 2 processes); tune --ray plugs in
    # edgequant.scaleout's Ray tasks (jobs, workers -> results)
    quantizer: Callable | None = None


def _say(progress: Progress | None, msg: str) -> None:
    if progress:
        progress(msg)


def _analyzer(model_path: Path, calib_src, options: TuneOptions, target: str, progress: Progress | None):
    """Sensitivity of the static default model on the calibration data (None if it fails): its
    top-level nodes and those of the If branches it quantized, in one ranking."""
    from ..sensitivity_bodies import analyze_model_with_bodies

    def analyze(static: Trial):
        _say(progress, f"per-node sensitivity on {options.sensitivity_samples} calibration samples")
        try:
            with quiet_logging():
                return analyze_model_with_bodies(model_path, static.path, calib_src, target=target,
                                                 limit=options.sensitivity_samples,
                                                 threads=max(1, options.run.session.intra_op_threads))
        except Exception as exc:  # noqa: BLE001 - the search goes on without a ranking
            _say(progress, f"sensitivity analysis failed: {type(exc).__name__}: {exc}")
            return None
    return analyze


def _dynamic_ranker(model_path: Path, calib_src, progress: Progress | None):
    """The weight MatMul/Gemm nodes by input SQNR under dynamic quantization, lowest first, on a
    few calibration samples (empty if it fails: the dynamic fallback is then skipped)."""
    from ..sensitivity_dynamic import rank_dynamic_inputs

    def rank() -> list[tuple[str, float]]:
        _say(progress, "ranking MatMul/Gemm inputs by their dynamic-quantization SQNR")
        try:
            return rank_dynamic_inputs(model_path, calib_src)
        except Exception as exc:  # noqa: BLE001 - the search goes on without it
            _say(progress, f"dynamic ranking failed: {type(exc).__name__}: {exc}")
            return []
    return rank


def _finalists(state: SearchState, count: int, *, judge_speed: bool = True) -> list[Trial]:
    """Defaults (for the seed's comparison) plus the fastest within-budget, not-slower candidates;
    on a device whose time is not latency (an emulator), the most accurate ones instead."""
    from .search import quality_score

    picks = [t for t in (state.get("dynamic"), state.get("static")) if t is not None and t.ok]
    key = (lambda t: -(t.speedup or 0.0)) if judge_speed else (lambda t: -quality_score(t))
    fastest_first = sorted((t for t in state.trials if t.ok and t.within_budget and t not in picks), key=key)
    good = [t for t in fastest_first if t.not_slower or not judge_speed]
    if not good:  # show the best within-budget candidate anyway: the report says why it loses
        good = fastest_first[:1]
    if not good:  # none within budget: the closest one, so the report shows the best INT8 tried
        good = sorted((t for t in state.trials if t.ok and t not in picks), key=quality_score, reverse=True)[:1]
    for t in good[:count]:
        if t not in picks:
            picks.append(t)
    return picks


def _publish(trial: Trial, out_dir: Path, stem: str, quality_on: str | None = None) -> Candidate:
    """Copy a cached candidate next to the report under a readable name (external data too).
    ``quality_on``: the device the search measured its quality on, kept instead of run again."""
    from ..measure.fidelity import Fidelity

    dest = out_dir / f"{stem}.{trial.name}.onnx"
    model_io.copy_model(trial.path, dest)
    known = (KnownQuality(Fidelity.from_dict(trial.fidelity), trial.accuracy, quality_on)
             if quality_on and trial.fidelity is not None else None)
    return Candidate(trial.name, dest, trial.recipe_dict, list(trial.notes), known=known)


def run_tune(model: str | Path, out_dir: str | Path, *, calib: str, eval_spec: str | None = None,
             options: TuneOptions | None = None, progress: Progress | None = None) -> dict:
    """Search recipes for ``model``; write report.json + report.html into ``out_dir``; return the report."""
    started = time.monotonic()
    options = options or TuneOptions()
    setup = open_run(model, out_dir, calib, eval_spec, options.run)
    if setup.calib is None:
        raise EdgequantError(f"{setup.model_path}: tune needs calibration data (--calib SRC)")
    with exclusive(setup.out_dir):    # one tune per folder: two would replace each other's cached files
        return _tune(setup, calib, options, progress, started)


def _tune(setup, calib: str, options: TuneOptions, progress: Progress | None, started: float) -> dict:
    from ..report import write_report
    from . import report as tune_report

    run = setup.options
    model_path, out_dir, proto, target = setup.model_path, setup.out_dir, setup.proto, setup.target
    calib_src, eval_src, eval_spec, notes = setup.calib, setup.eval, setup.eval_spec, setup.notes

    _say(progress, "running FP32 on the evaluation data")
    device, host, timer = run.make_devices()
    from ..pipeline import output_roles

    ref: Reference = make_reference(model_path, eval_src, host, run.metric,
                                    output_roles(model_path, run))
    sha = model_io.sha256_file(model_path)
    # the tool and the data's content too: a cached candidate from another edgequant, onnxruntime or
    # machine, or from other samples under the same file name, is not this run's candidate
    tool = provenance.tool_fingerprint()
    cache = TuneCache(out_dir, sha,
                      calib_context={"spec": str(calib), "limit": run.calib_limit, "preprocess": repr(run.preprocess),
                                     "data": provenance.data_fingerprint(str(calib)), "tool": tool},
                      measure_context={"eval": str(eval_spec), "limit": run.eval_limit, "metric": run.metric,
                                       "data": provenance.data_fingerprint(str(eval_spec)), "tool": tool,
                                       "preprocess": repr(run.preprocess), "session": run.session.to_dict(),
                                       "output_roles": dict(run.output_roles),
                                       "runs": options.trial_runs, "min_time_s": run.min_time_s,
                                       **({"burst": run.burst} if run.burst > 1 else {}), "model": sha})
    runner = TrialRunner(model_path, target, cache, CalibSpec(str(calib), run.calib_limit, run.preprocess), ref,
                         eval_src, run.budget, device, timer, trial_runs=options.trial_runs,
                         trial_warmup=options.trial_warmup, trial_min_time_s=run.min_time_s, trial_burst=run.burst,
                         workers=options.workers, progress=progress,
                         **({"quantize_batch": options.quantizer} if options.quantizer else {}))
    from .qat_stage import QatTrainer, qat_available

    if options.qat_minutes > 0 and qat_available():   # training is never timed: all cores
        runner.qat_trainer = QatTrainer(model_path, target, runner.calib, progress=progress)
    deadline = started + 60.0 * options.time_budget_min if options.time_budget_min is not None else None
    runner.deadline = deadline
    from ..targets import resolve_target

    float_fallback = (resolve_target(target).float_fallback if options.float_fallback is None
                      else options.float_fallback)
    search = Search(runner, target, _analyzer(model_path, calib_src, options, target, progress),
                    rank_dynamic=_dynamic_ranker(model_path, calib_src, progress), deadline=deadline,
                    max_candidates=options.max_candidates, float_fallback=float_fallback,
                    qat_minutes=options.qat_minutes)
    state = search.run()
    notes.extend(state.notes)

    finalists = _finalists(state, options.finalists, judge_speed=device.facts().can_time)
    _say(progress, f"final measurement: fp32 and {len(finalists)} candidates ({run.runs} interleaved rounds)")
    # off this CPU (a simulator, an emulator, a board) the search's outputs are the final ones: same
    # file, device and data; only the timing, memory and profiles here need the full runs
    quality_on = device.name if device is not host else None
    if quality_on and finalists:
        notes.append(f"the finalists' outputs on {quality_on} are the search's measurement of the same files "
                     "on the same evaluation data; the final measurement did not run them there again")
    candidates = ([Candidate("fp32", model_path, {"mode": "fp32"})]
                  + fp32_rewrite_candidate(model_path, proto, out_dir, target)   # exact rewrites compete too
                  + [_publish(t, out_dir, model_path.stem, quality_on) for t in finalists])
    variants = measure_candidates(candidates, eval_src, run, progress, notes)
    failed = [{"name": t.name, "config": t.recipe_dict, "error": t.error} for t in state.trials if t.error]
    report = build_report(model_path, proto, variants, run, target=target, notes=notes, failed=failed)
    detail = tune_report.recommendation_detail(state, report["recommended"])
    if detail:
        report["recommendation_reason"] += f"; {detail}"
    report["search_trace"] = tune_report.trace_rows(state, target)
    report["pareto_plot"] = tune_report.pareto_plot(state, ref, report["recommended"])
    report["advice"] = tune_report.advice(state, variants, report["recommended"])
    report["tune"] = {
        "candidates": len(state.trials), "quantized_now": runner.quantized_count,
        "from_cache": sum(t.quantized_cached for t in state.trials),
        "stopped": state.stopped, "time_budget_min": options.time_budget_min, "float_fallback": float_fallback,
        "elapsed_s": round(time.monotonic() - started, 1), "trial_runs": options.trial_runs,
        "sensitivity": state.sensitivity.to_dict() if state.sensitivity else None,
    }
    if state.stopped:
        report["notes"].append(f"search stopped early: {state.stopped}")
    write_report(out_dir, report)
    return report
