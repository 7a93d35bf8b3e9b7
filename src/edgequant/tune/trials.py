"""Trials: quantize a batch of recipes (process pool), then measure them against FP32.

Quality (task metric or fidelity) is measured per candidate against FP32 outputs collected
once; speed is one interleaved benchmark of FP32 and the whole batch, in this process, so every
ratio in a batch comes from the same rounds. Quantization may run in worker processes; timing
never does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..devices.base import Device
from ..errors import EdgequantError
from ..jobs import CalibSpec, QuantizeJob, quantize_batch
from ..measure.latency import Speedup
from .cache import TuneCache
from .recipes import Recipe

Progress = Callable[[str], None]
DEADLINE_GRACE_S = 30.0      # a batch may quantize this long past the time budget, no longer


@dataclass
class Reference:
    """FP32 outputs over the evaluation data, collected once for every trial."""

    path: Path
    outputs: dict
    labels: Any
    metric: Callable | None
    fp32_result: Any
    fp32_accuracy: dict | None
    feeds: dict
    fidelity_label: str
    roles: dict = field(default_factory=dict)      # output name -> role (measure.roles)
    padding: dict = field(default_factory=dict)    # output name -> [N, T] real positions (measure.padding)


@dataclass
class Trial:
    """One candidate of the search, measured (or why not)."""

    recipe: Recipe
    recipe_dict: dict
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False               # stopped by the time budget: no verdict on the recipe
    fidelity: dict | None = None
    accuracy: dict | None = None
    coverage: dict | None = None
    placement: dict | None = None         # accelerator devices: where its nodes ran (measure.Placement)
    speed: Speedup | None = None          # vs FP32, from the trial batch's interleaved rounds
    within_budget: bool = False           # False when undecided: the search needs a decided pass
    budget_why: str = ""
    budget_decision: str = ""             # within | undecided | over (verdict.Judgement)
    quantized_cached: bool = False
    quantized_on: str | None = None       # the Ray node that quantized it (tune --ray)
    remote_quality: dict | None = None    # quality measured by that node (tune --ray), else None
    measured_cached: bool = False

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def ok(self) -> bool:
        return self.error is None and self.fidelity is not None

    @property
    def operators_on_cpu(self) -> list[str]:
        """Node names the accelerator left to the CPU (a defect on such a target)."""
        return [entry.rsplit(" (", 1)[0] for entry in (self.placement or {}).get("operators_on_cpu", [])]

    @property
    def speedup(self) -> float | None:
        return self.speed.ratio if self.speed is not None else None

    @property
    def speedup_ci(self) -> tuple[float, float] | None:
        return (self.speed.ci_low, self.speed.ci_high) if self.speed is not None else None

    @property
    def faster(self) -> bool:
        return self.speed is not None and self.speed.faster_than_noise

    @property
    def not_slower(self) -> bool:
        return self.speed is not None and not self.speed.slower_than_noise

    def outcome(self) -> str:
        """Plain words for the search trace."""
        cached = " (cached)" if self.measured_cached else ""
        if self.error and self.timed_out:
            return f"not finished: {self.error.removeprefix('stopped: ')}"
        if self.error:
            return f"failed: {self.error}"
        if self.budget_decision == "undecided":
            return f"undecided: evaluation set too small: {self.budget_why}{cached}"
        if not self.within_budget:
            return f"over budget: {self.budget_why}{cached}"
        lo, hi = self.speedup_ci or (0.0, 0.0)
        if lo > 1.0:
            return f"within budget, {self.speedup:.2f}x faster (95% CI {lo:.2f}-{hi:.2f}){cached}"
        if hi < 1.0:
            return f"within budget but slower than FP32 ({self.speedup:.2f}x){cached}"
        return f"within budget, not faster than FP32 beyond noise ({self.speedup:.2f}x){cached}"


def make_reference(model_path: Path, eval_src, device: Device, metric_spec: str | None,
                   roles: dict | None = None) -> Reference:
    """Run FP32 once over the evaluation data; pick the task metric if there is one."""
    from ..measure.accuracy import choose_metric
    from ..measure.padding import padding_masks
    from ..metrics import accuracy_entry

    collected = device.outputs([str(model_path)], eval_src)
    outputs = collected.outputs[0]
    metric = choose_metric(metric_spec, has_labels=collected.labels is not None, synthetic=eval_src.synthetic)
    fp32_result = metric(outputs, collected.labels, outputs) if metric else None
    first = next(iter(eval_src))
    return Reference(model_path, outputs, collected.labels, metric, fp32_result,
                     accuracy_entry(fp32_result, fp32_result) if fp32_result else None,
                     dict(first.feeds), "metric" if metric else "fidelity", dict(roles or {}),
                     padding_masks(eval_src, outputs))


#: On an emulated device (a simulator: ~1 s per BERT text) a candidate is first measured on every
#: EARLY_STRIDE-th evaluation sample (strided, so a data set sorted by class is still covered);
#: when that subset already puts it over budget with its whole 95% interval, the rest is not run.
EARLY_STRIDE = 4
EARLY_MIN_SAMPLES = 400       # fewer: a quarter of them rarely decides anything, measure all


def _quality_on(ref: Reference, outs: dict, idx: np.ndarray | None = None) -> tuple[dict, dict | None, dict | None]:
    """(fidelity, accuracy, FP32 accuracy) of ``outs`` against the reference's samples ``idx`` (all: None)."""
    from ..measure.fidelity import compare_outputs
    from ..metrics import accuracy_entry

    if idx is None:
        ref_outs, labels, padding, fp32_result, fp32_acc = (ref.outputs, ref.labels, ref.padding, ref.fp32_result,
                                                            ref.fp32_accuracy)
    else:
        ref_outs = {k: v[idx] for k, v in ref.outputs.items()}
        labels = ref.labels[idx] if ref.labels is not None else None
        padding = {k: v[idx] for k, v in ref.padding.items()}
        fp32_result = ref.metric(ref_outs, labels, ref_outs) if ref.metric is not None else None
        fp32_acc = accuracy_entry(fp32_result, fp32_result) if fp32_result else None
    fid = compare_outputs(ref_outs, outs, ref.roles or None, padding=padding).to_dict()
    acc = accuracy_entry(ref.metric(outs, labels, ref_outs), fp32_result) if ref.metric is not None else None
    return fid, acc, fp32_acc


def _outputs_early(path: Path, ref: Reference, eval_src, device: Device,
                   budget: Any) -> tuple[dict | None, tuple[dict, dict | None] | None]:
    """(all of ``path``'s outputs over ``eval_src``, None), or, when every EARLY_STRIDE-th sample
    already decides "over", (None, that subset's (fidelity, accuracy))."""
    samples = list(eval_src)
    first = np.arange(0, len(samples), EARLY_STRIDE)
    outs_first = device.outputs([str(path)], [samples[i] for i in first]).outputs[0]
    fid, acc, fp32_acc = _quality_on(ref, outs_first, first)
    if budget.judge(fp32_acc, acc, fid).decision == "over":
        fid["evaluated_subset"] = {"samples": int(len(first)), "of": len(samples), "stride": EARLY_STRIDE}
        return None, (fid, acc)
    rest = np.setdiff1d(np.arange(len(samples)), first)
    outs_rest = device.outputs([str(path)], [samples[i] for i in rest]).outputs[0]
    back = np.argsort(np.concatenate([first, rest]))        # to the evaluation data's own order
    return {k: np.concatenate([outs_first[k], outs_rest[k]])[back] for k in outs_first}, None


def measure_quality(path: Path, ref: Reference, eval_src, device: Device, budget: Any = None) -> dict:
    """Fidelity, task metric and INT8 coverage of one candidate. With ``budget`` on an emulated
    device of a large evaluation set, a candidate a strided quarter already puts over budget is
    measured on that quarter only (``fidelity["evaluated_subset"]`` says so)."""
    early = (budget is not None and device.facts().emulated
             and (getattr(eval_src, "count", None) or 0) >= EARLY_MIN_SAMPLES)
    if early:
        outs, decided = _outputs_early(path, ref, eval_src, device, budget)
    else:
        outs, decided = device.outputs([str(path)], eval_src).outputs[0], None
    fid, acc = decided if decided is not None else _quality_on(ref, outs)[:2]
    placement = device.placement(path)
    return {"fidelity": fid, "accuracy": acc, "coverage": device.coverage(path).to_dict(),
            "placement": placement.to_dict() if placement is not None else None}


@dataclass
class QualityProbe:
    """What a worker needs to measure a candidate's quality where it quantized it (``tune --ray``):
    the FP32 reference and the evaluation samples, measured on this machine's kind of device (the
    CPU). Shipped once per batch; a worker that cannot load it (a metric module only the driver
    can import) leaves quality to the driver."""

    ref: Reference
    samples: list
    session: Any

    def measure(self, path: Path) -> dict:
        from ..devices import local_cpu

        try:
            return measure_quality(path, self.ref, self.samples, local_cpu(self.session))
        except EdgequantError as exc:
            return {"error": str(exc)}


def time_batch(paths: Sequence[Path], ref: Reference, device: Device, *, runs: int,
               warmup: int, min_seconds: float = 0.0, burst: int = 1) -> tuple[list[Speedup], int]:
    """Each path's speedup over FP32, all interleaved in one benchmark; and the rounds timed."""
    bench = device.time_interleaved([str(ref.path), *map(str, paths)], ref.feeds, warmup=warmup, runs=runs,
                                    min_seconds=min_seconds, burst=burst)
    return [t.speedup for t in bench.models[1:]], bench.runs


@dataclass
class TrialRunner:
    """Quantizes and measures batches of recipes, through the cache."""

    model_path: Path
    target: str
    cache: TuneCache
    calib: CalibSpec
    ref: Reference
    eval_src: Any
    budget: Any
    device: Device                    # where candidates run (outputs, coverage)
    timer: Device                     # where time is real: the device, or this machine's CPU
    trial_runs: int = 30
    trial_warmup: int = 3
    trial_min_time_s: float = 0.0       # more rounds for fast models (Device.time_interleaved)
    trial_burst: int = 1                # runs in a row per round (RunOptions.burst: the deployment's regime)
    workers: int = 2
    progress: Progress | None = None
    quantize_batch: Callable = quantize_batch      # jobs, workers -> results (Ray: scaleout.tune_tasks)
    qat_trainer: Callable | None = None           # (recipe, out_path) -> result, for QAT recipes (tune.qat_stage)
    deadline: float | None = None                 # time.monotonic() when the search's time budget ends
    quantized_count: int = 0
    _count_lock: Any = field(default_factory=threading.Lock)   # batches may finish in two threads
    _probe: QualityProbe | None = None
    _ahead: dict = field(default_factory=dict)     # recipe name -> (Trial, Future) quantizing ahead

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def quantize_ahead(self, recipes: Sequence[Recipe]) -> None:
        """Start quantizing ``recipes`` now, in the background, when quantization runs outside this
        process (worker processes, Ray): the search's next batch, while this process runs an analysis
        that batch does not depend on. :meth:`run` picks them up; :meth:`settle` waits for them.
        While such a batch runs, another starts only on a quantizer whose batches share one
        concurrency limit (``shares_slots``: Ray's): it then takes the slots the first one frees."""
        from concurrent.futures import ThreadPoolExecutor

        if self.quantize_batch is quantize_batch and self.workers < 2:   # inline: nothing to overlap
            return
        running = any(not future.done() for _trial, future in self._ahead.values())
        if running and not getattr(self.quantize_batch, "shares_slots", False):
            return    # a second batch now would take its own workers: it waits for run() instead
        trials = [Trial(r, r.to_dict(self.target)) for r in recipes if r.name not in self._ahead]
        if not trials:
            return
        self._quality_probe()    # made once, here, not by two batches at once
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgequant-ahead")
        future = pool.submit(self._quantize, trials)
        pool.shutdown(wait=False)
        self._ahead.update({t.name: (t, future) for t in trials})

    def settle(self) -> None:
        """Wait for quantization started ahead (the search may end before it needs it)."""
        for _trial, future in list(self._ahead.values()):
            future.result()
        self._ahead.clear()

    def run(self, recipes: Sequence[Recipe], *, deadline: float | None = None) -> list[Trial]:
        """Quantize (or pick up what started ahead), measure and judge ``recipes``; ``deadline``: an
        earlier end than the search's for this batch's quantization (a slow stage's share)."""
        trials, started = [], set()
        for r in recipes:
            ahead = self._ahead.pop(r.name, None)
            trials.append(ahead[0] if ahead else Trial(r, r.to_dict(self.target)))
            if ahead:
                started.add(ahead[1])
        for future in started:
            future.result()
        self._quantize([t for t in trials if t.path is None], deadline=deadline)
        for t in trials:
            if t.error is None:
                self._quality(t)
        self._speed([t for t in trials if t.error is None and t.speed is None])
        for t in trials:
            if t.error is None:
                judged = self.budget.judge(self.ref.fp32_accuracy, t.accuracy, t.fidelity)
                t.within_budget, t.budget_why, t.budget_decision = judged.within, judged.why, judged.decision
                part = (t.fidelity or {}).get("evaluated_subset")
                if part:
                    t.budget_why += (f" (decided on {part['samples']} of {part['of']} evaluation samples, every "
                                     f"{part['stride']}th: the rest was not run on {self.device.name})")
                if t.operators_on_cpu:   # never accepted: the model cannot ship to the accelerator as built
                    t.within_budget, t.budget_decision = False, "over"
                    t.budget_why = (f"{len(t.operators_on_cpu)} operator(s) run on the CPU, not on {self.device.name}: "
                                    f"{', '.join(t.operators_on_cpu[:4])}") + (f"; {t.budget_why}" if t.budget_why else "")
        return trials

    @property
    def parallel(self) -> int:
        """How many recipes are quantized side by side: the local pool holds at most two workers;
        another quantizer (Ray's) runs ``workers`` at a time."""
        return max(1, min(2, self.workers) if self.quantize_batch is quantize_batch else self.workers)

    def fp32_model(self):
        """The FP32 graph the recipes refer to (node and tensor names), loaded without weights' data."""
        import onnx

        return onnx.load(str(self.model_path), load_external_data=False)

    def _quantize(self, trials: Sequence[Trial], *, deadline: float | None = None) -> None:
        todo = []
        for t in trials:
            t.path = self.cache.model_path(t.recipe_dict)
            done = self.cache.quantized(t.recipe_dict)
            if done is not None:
                t.quantized_cached = True
                t.error = done.get("error")
                t.notes = [*done.get("warnings", []), *done.get("notes", [])]
            else:
                todo.append(t)
        if not todo:
            return
        trained = [t for t in todo if t.recipe.qat_minutes]
        todo = [t for t in todo if not t.recipe.qat_minutes]
        results = []
        if todo:
            names = ", ".join(t.name for t in todo)
            self._say(f"quantizing {names}" + (f" ({min(self.parallel, len(todo))} workers)" if len(todo) > 1 else ""))
            jobs = [QuantizeJob(self.model_path, t.path, t.recipe.config(self.target), self.calib) for t in todo]
            probe = self._quality_probe()
            results = self.quantize_batch(jobs, self.workers, timeout_s=self._time_left(deadline),
                                          **({"probe": probe} if probe is not None else {}))
        for t in trained:
            self._say(f"training {t.name} (QAT, up to {t.recipe.qat_minutes:g} min)")
            results.append(self.qat_trainer(t.recipe, t.path) if self.qat_trainer is not None
                           else {"ok": False, "error": "QAT needs torch: pip install 'edgequant[qat]'"})
        for t, res in zip([*todo, *trained], results):
            with self._count_lock:
                self.quantized_count += 1
            t.quantized_on = res.get("quantized_on")
            t.remote_quality = res.get("quality")
            if not res["ok"]:
                t.error = res["error"]
            else:
                t.notes = [*res["warnings"], *res["notes"]]
            t.timed_out = bool(res.get("timed_out"))
            if t.timed_out:   # not a verdict on the recipe: a later run with more time retries it
                for stale in t.path.parent.glob(f".{t.path.name}.*.tmp"):   # its writer was stopped mid-way
                    stale.unlink(missing_ok=True)
                continue
            self.cache.store_quantized(t.recipe_dict, res)

    def _quality_probe(self) -> QualityProbe | None:
        """A probe for quantizers that measure quality where they quantize (``measures_quality``),
        when candidates run on the CPU: an accelerator stays with the driver's device."""
        if not getattr(self.quantize_batch, "measures_quality", False) or self.device.kind != "cpu":
            return None
        if self._probe is None:
            self._probe = QualityProbe(self.ref, list(self.eval_src), self.device.session)
        return self._probe

    def _time_left(self, deadline: float | None = None) -> float | None:
        """How long a batch started now may quantize: the budget's rest plus a grace, so that a
        candidate started just before the end can finish, but a slow one (AdaRound on a large
        model) cannot hold the search for many times its budget. A batch with its own ``deadline``
        (a slow stage's share of the budget) gets no grace: the rest is another stage's."""
        if deadline is not None:
            return max(0.0, deadline - time.monotonic())
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic()) + DEADLINE_GRACE_S

    def _quality(self, t: Trial) -> None:
        cached = self.cache.measured(t.recipe_dict)
        if cached is not None:
            t.measured_cached = True
            self._apply(t, cached)
            return
        if t.remote_quality is not None:
            if "error" in t.remote_quality:
                t.error = t.remote_quality["error"]
            else:
                self._apply(t, t.remote_quality)
            return
        self._say(f"measuring {t.name} on the evaluation data")
        try:
            m = measure_quality(t.path, self.ref, self.eval_src, self.device, self.budget)
        except EdgequantError as exc:
            t.error = str(exc)
            return
        self._apply(t, m)

    @staticmethod
    def _apply(t: Trial, m: dict) -> None:
        t.fidelity, t.accuracy, t.coverage = m["fidelity"], m["accuracy"], m["coverage"]
        t.placement = m.get("placement")
        if m.get("speed"):
            sp = m["speed"]
            t.speed = Speedup(sp["ratio"], sp["ci"][0], sp["ci"][1], sp.get("confidence", 0.95), sp.get("resamples", 1000))

    def _speed(self, trials: Sequence[Trial]) -> None:
        if not trials:
            return
        self._say(f"timing {', '.join(t.name for t in trials)} interleaved with FP32 (>= {self.trial_runs} rounds)")
        try:
            results, rounds = time_batch([t.path for t in trials], self.ref, self.timer, runs=self.trial_runs,
                                         warmup=self.trial_warmup, min_seconds=self.trial_min_time_s,
                                         burst=self.trial_burst)
        except EdgequantError as exc:
            for t in trials:
                t.error = str(exc)
            return
        for t, sp in zip(trials, results):
            t.speed = sp
            self.cache.store_measured(t.recipe_dict, {
                "fidelity": t.fidelity, "accuracy": t.accuracy, "coverage": t.coverage, "placement": t.placement,
                "speed": {"ratio": sp.ratio, "ci": [sp.ci_low, sp.ci_high], "confidence": sp.confidence,
                          "resamples": sp.resamples, "runs": rounds}})
