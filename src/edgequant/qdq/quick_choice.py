"""Choose between alternative graphs of one model by a quick interleaved timing on a device.

Where a recipe can write the same model more than one way (a transformer fused or not, a
runtime fusion kept or blocked), which one is faster depends on the machine and the runtime
version, so it is measured, not assumed: a probe of two rounds sizes the timing, then every
alternative runs once per round in random order (``Device.time_interleaved``) for about
``budget_s`` seconds, and the lowest lower quartile wins: on a shared machine the rounds where
another process took the core land in the upper half, and over 20 rounds at load 7 on 2 cores
the quartile picked the same of four BERT graphs 6 times out of 6, the median 5 and the minimum
3. ``run``/``tune`` time their candidates again with the full interleaved timing; this is the
cheap check ``quantize`` can afford.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class QuickChoice:
    chosen: str
    quartile_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    threads: int = 1
    why_untimed: str | None = None      # set when the choice was not timed
    dropped: dict[str, str] = field(default_factory=dict)   # alternative -> why it could not run
    # choose_robust: input scenario -> alternative -> lower-quartile ms, and each alternative's worst
    # slowdown against the fastest of a scenario
    scenarios: dict[str, dict[str, float]] = field(default_factory=dict)
    worst_slowdown: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        failed = "".join(f"; {k} dropped: {v}" for k, v in self.dropped.items())
        if self.why_untimed:
            return f"kept {self.chosen} without timing: {self.why_untimed}{failed}"
        if self.scenarios:
            per = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in q.items())
                            for s, q in self.scenarios.items())
            return (f"quick timing on {len(self.scenarios)} input scenarios ({self.rounds} interleaved rounds each, "
                    f"{self.threads} thread(s), lower quartile) -- {per}; kept {self.chosen}, at most "
                    f"{self.worst_slowdown[self.chosen] - 1:.0%} slower than the fastest in any scenario{failed}")
        times = ", ".join(f"{k} {v:.2f} ms" for k, v in self.quartile_ms.items())
        return (f"quick timing ({self.rounds} interleaved rounds, {self.threads} thread(s), lower quartile): "
                f"{times}; kept {self.chosen}{failed}")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "quartile_ms": self.quartile_ms, "rounds": self.rounds,
                "threads": self.threads, "why_untimed": self.why_untimed, "dropped": self.dropped,
                **({"scenarios": self.scenarios, "worst_slowdown": self.worst_slowdown} if self.scenarios else {})}


def choose_fastest(candidates: Mapping[str, str | Path], device, feeds, *, budget_s: float = 3.0,
                   min_rounds: int = 5, max_rounds: int = 30, warmup: int = 2) -> QuickChoice:
    """The candidate (name -> model path) with the lowest lower-quartile latency on ``device``.

    A probe (one warm-up, two rounds) sizes the timing to ``budget_s``; when even ``min_rounds``
    rounds would not fit, the probe's own two rounds decide (the note says so). A candidate that
    fails to run on ``feeds`` is dropped (``dropped`` says why); when none runs, the first is
    kept untimed."""
    from edgequant.errors import EdgequantError

    names = list(candidates)
    threads = max(1, getattr(getattr(device, "session", None), "intra_op_threads", 1) or 1)
    if len(names) == 1:
        return QuickChoice(names[0], threads=threads, why_untimed="no alternative")
    try:
        probe = device.time_interleaved([str(candidates[n]) for n in names], feeds, warmup=1, runs=2)
    except EdgequantError:
        dropped = {}
        for n in names:
            try:
                device.time_interleaved([str(candidates[n])], feeds, warmup=0, runs=2)
            except EdgequantError as exc:
                dropped[n] = " ".join(str(exc).split())[:200]
        names = [n for n in names if n not in dropped]
        if len(names) < 2:
            kept = names[0] if names else next(iter(candidates))
            return QuickChoice(kept, threads=threads, dropped=dropped,
                               why_untimed="the other alternatives fail on the timing inputs" if names
                               else f"no alternative runs on the timing inputs ({next(iter(dropped.values()))})")
        choice = choose_fastest({n: candidates[n] for n in names}, device, feeds, budget_s=budget_s,
                                min_rounds=min_rounds, max_rounds=max_rounds, warmup=warmup)
        return QuickChoice(choice.chosen, choice.quartile_ms, choice.rounds, threads, choice.why_untimed,
                           {**dropped, **choice.dropped})
    paths = [str(candidates[n]) for n in names]
    round_s = sum(m.stats.p50 for m in probe.models) / 1000.0
    rounds = int(min(max_rounds, budget_s / max(round_s, 1e-9)))
    result = probe
    if rounds >= min_rounds:
        result = device.time_interleaved(paths, feeds, warmup=warmup, runs=rounds)
    else:
        rounds = 2
    import numpy as np

    quartiles = {n: float(np.percentile(m.stats.samples_ms, 25)) for n, m in zip(names, result.models)}
    return QuickChoice(min(quartiles, key=quartiles.__getitem__), quartiles, rounds, threads)


def choose_robust(candidates: Mapping[str, str | Path], device, scenarios: Mapping[str, Any], *,
                  budget_s: float = 3.0) -> QuickChoice:
    """When the real inputs are unknown: time the candidates on each scenario's feeds
    (:func:`choose_fastest`, ``budget_s`` each) and keep the one whose worst slowdown against the
    fastest of any scenario is smallest (minimax regret), so no plausible input finds it far
    behind. A candidate that cannot run in some scenario is dropped; when a scenario could not be
    timed, the first scenario's own choice stands."""
    per = {name: choose_fastest(candidates, device, feeds, budget_s=budget_s) for name, feeds in scenarios.items()}
    first = next(iter(per.values()))
    dropped = {k: v for c in per.values() for k, v in c.dropped.items()}
    names = [n for n in candidates if n not in dropped]
    if len(per) < 2 or any(c.why_untimed for c in per.values()) or not names:
        return first
    slowdown = {n: max(c.quartile_ms[n] / min(c.quartile_ms.values()) for c in per.values()) for n in names}
    chosen = min(slowdown, key=slowdown.__getitem__)
    return QuickChoice(chosen, first.quartile_ms, min(c.rounds for c in per.values()), first.threads,
                       dropped=dropped, scenarios={s: c.quartile_ms for s, c in per.items()},
                       worst_slowdown=slowdown)
