"""Options shared by several commands, so that a flag means (and defaults to) the same thing everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import api
from ..measure.roles import parse_overrides
from ..targets import TARGETS

F = TypeVar("F", bound=Callable[..., Any])


def threads_option(f: F) -> F:
    """--threads for every measuring command (eval, bench, run, tune): one default, api.DEFAULT_THREADS."""
    return click.option("--threads", type=click.IntRange(min=0), default=api.DEFAULT_THREADS, show_default=True,
                        help="Intra-op threads for every measurement (0 = ORT default: one per physical core).")(f)


def budget_options(f: F) -> F:
    """--max-drop / --max-abs-drop: the accuracy budget of run and tune."""
    f = click.option("--max-abs-drop", type=click.FloatRange(min=0), default=None,
                     help="Allowed task-metric drop in the metric's own units (overrides --max-drop).")(f)
    f = click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
                     help="Allowed relative drop of the task metric vs FP32. Without a metric (no labels), "
                          "the share of decisions that may differ from FP32's: top-1 or nearest-neighbour "
                          "agreement >= 1 - MAX_DROP.")(f)
    return f


def model_and_data_options(*, eval_required: bool, default_out: str) -> Callable[[F], F]:
    """MODEL, its data sources, output folder, target and metric: shared by run and tune."""
    def apply(f: F) -> F:
        for option in reversed([
            click.argument("model", type=click.Path(path_type=Path)),
            click.option("--calib", required=True, help="Calibration data source."),
            click.option("--eval", "eval_spec", required=eval_required, default=None,
                         help="Evaluation data source (labels optional)."),
            click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
                         help=f"Output folder (default: {default_out})."),
            click.option("--target", type=click.Choice(["auto", *TARGETS]), default="auto", show_default=True),
            click.option("--metric", default=None, help="Task metric: top1 or module:function."),
            click.option("--preprocess", default=None, help="Preprocessing spec for image-folder sources."),
            device_option,
            output_role_option,
        ]):
            f = option(f)
        return f
    return apply


def output_role_option(f: F) -> F:
    """--output-role NAME=ROLE (repeatable): how an output is judged without labels."""
    return click.option("--output-role", "output_role", multiple=True, metavar="NAME=ROLE",
                        help="Judge output NAME as classifier | embedding | sequence | detection | dense (default: "
                             "detected from the graph; the report says which and why).")(f)


def device_option(f: F) -> F:
    """--device: where variants run and are measured (``edgequant devices`` lists them)."""
    from ..devices import DEVICE_NAMES

    return click.option("--device", default="auto", show_default=True, metavar="|".join(["auto", *DEVICE_NAMES, "BOARD"]),
                        help="Where models run and are measured (see `edgequant devices`); auto: the target's "
                             "own device when available here (qnn -> qnn-htp), else cpu; BOARD: a board on the Ray "
                             "cluster named by RAY_ADDRESS (`edgequant devices --ray` lists them).")(f)


def min_time_option(f: F) -> F:
    """--min-time S: fast models get more timed rounds than --runs, until the rounds last S seconds."""
    return click.option("--min-time", "min_time", type=click.FloatRange(min=0.0), default=0.5, show_default=True,
                        help="Time at least --runs rounds and, for fast models, more (up to 2000) until the timed "
                             "rounds last this many seconds: sub-millisecond models get tight intervals. 0: exactly "
                             "--runs.")(f)


def burst_option(f: F) -> F:
    """--burst K: time each model's steady state (K runs in a row per round) instead of one run per round."""
    return click.option("--burst", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Runs in a row per model and round; the first is untimed and the median of the rest "
                             "is the round's time: the steady state of a model run after itself (a stream of "
                             "frames, a model serving alone), still paired across models. 1: each model once per "
                             "round, right after another model's run (a pipeline of several models per frame).")(f)


def run_options(*, target: str, max_drop: float, max_abs_drop: float | None, threads: int, warmup: int, runs: int,
                metric: str | None, preprocess: str | None, calib_limit: int, eval_limit: int | None,
                output_role: tuple[str, ...] = (), **extra: Any) -> api.RunOptions:
    """The api.RunOptions that run's and tune's shared flags describe (``extra``: other RunOptions fields)."""
    return api.RunOptions(
        target=target, budget=api.Budget(max_drop=max_drop, max_abs_drop=max_abs_drop),
        session=api.SessionConfig(intra_op_threads=threads), warmup=warmup, runs=runs, metric=metric,
        preprocess=api.Preprocess.parse(preprocess) if preprocess else None, calib_limit=calib_limit,
        eval_limit=eval_limit, output_roles=parse_overrides(output_role), **extra)
