"""The per-activation strength search of SmoothQuant, on numpy data (no model)."""

from __future__ import annotations

import numpy as np

from edgequant.algorithms.smoothquant_strength import (
    ROW_BUDGET,
    SiteStats,
    choose_strength,
    factors,
    reader_error,
    rows_per_site,
)


def _stats(x: np.ndarray, samples: int = 4) -> SiteStats:
    st = SiteStats()
    for chunk in np.array_split(x, samples):
        st.add(chunk[None])
    return st


def test_an_outlier_channel_gets_smoothed_and_the_choice_is_the_best_measured() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (256, 64))
    x[:, 7] *= 60.0                               # one channel 60x the rest on every token
    w = rng.normal(0, 0.1, (64, 32))
    st = _stats(x)
    got = choose_strength(st, [w], dynamic=True)
    assert got.alpha is not None and got.gain_db > 6
    for alpha in (0.5, 0.6, 0.7, 0.8, 0.9):       # no listed strength does better than the one kept
        assert got.error_after <= reader_error(st, [w], factors(st.amax, np.abs(w).max(axis=1), alpha),
                                               dynamic=True) + 1e-15


def test_uniform_channels_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (256, 64))
    w = rng.uniform(-0.1, 0.1, (64, 32))
    got = choose_strength(_stats(x), [w], dynamic=True, min_gain_db=0.5)
    assert got.alpha is None and got.factors is None


def test_static_ranges_span_every_sample_and_dynamic_ones_each_call() -> None:
    rng = np.random.default_rng(2)
    quiet, loud = rng.normal(0, 1, (64, 16)), rng.normal(0, 1, (64, 16)) * 50.0
    st = _stats(np.concatenate([quiet, loud]), samples=2)
    w = rng.normal(0, 0.1, (16, 8))
    one = np.ones(16)
    # the quiet call keeps its own fine range in dynamic mode, the loud call's in static mode
    assert reader_error(st, [w], one, dynamic=True) < reader_error(st, [w], one, dynamic=False)


def test_wide_models_keep_fewer_rows_within_the_budget() -> None:
    assert rows_per_site([384] * 24) == 1024
    wide = rows_per_site([4096] * 200)
    assert 64 <= wide < 1024 and wide * 4096 * 200 <= max(ROW_BUDGET, 64 * 4096 * 200)
    st = SiteStats(max_rows=100)
    for _ in range(3):
        st.add(np.zeros((1, 64, 8)))
    assert sum(len(r) for r in st.rows) == 100
