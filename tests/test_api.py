"""edgequant.api: typed results whose to_dict() is exactly what the CLI prints or writes.

The CLI is a thin layer (parse, call the API, print), so each test runs both on the same inputs
and compares; the values asserted are real measurements (speedup direction, exact fidelity).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models  # noqa: E402
from test_measure_fixtures import mlp  # noqa: E402

from edgequant import api
from edgequant.cli import main
from edgequant.errors import EdgequantError
from edgequant.measure.serialize import dumps

SRC = Path(api.__file__).parent
TIMING_KEYS = {"latency_ms", "throughput_per_s", "speedup", "speedup_ci", "faster_than_noise", "slower_than_noise",
               "samples_ms", "peak_memory_mb", "memory_delta_mb", "wall_s", "baseline_rss_mb"}


def _json(doc: dict) -> dict:
    """A result document as the CLI writes it (strict JSON: +inf dB capped, tuples as lists)."""
    return json.loads(dumps(doc))


def _without_timings(doc):
    """``doc`` with every measured time/memory value replaced by its type (two runs never agree on those)."""
    if isinstance(doc, dict):
        return {k: (type(v).__name__ if k in TIMING_KEYS else _without_timings(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("api")
    x = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    np.savez(d / "labeled.npz", x=x, labels=np.random.default_rng(1).integers(0, 5, 12))
    np.savez(d / "unlabeled.npz", x=x)
    return {"slow": mlp(d / "slow.onnx", layers=10, width=128, batch=32),
            "fast": mlp(d / "fast.onnx", layers=1, width=128, batch=32),
            "cls": mlp(d / "cls.onnx", layers=2, classes=5),
            "mlp": onnx_models.save(onnx_models.matmul_net(), d / "mlp.onnx"),
            "labeled": d / "labeled.npz", "unlabeled": d / "unlabeled.npz", "dir": d}


# ---- inspect ------------------------------------------------------------------------------------

def test_inspect_float_and_quantized(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    facts = api.inspect(files["mlp"])
    assert isinstance(facts, api.ModelFacts)
    assert facts.opset == 13 and facts.op_counts == {"MatMul": 2, "Add": 2, "Relu": 1}
    assert facts.inputs == (api.TensorFacts("x", "float32", ("N", 64)),)
    assert not facts.quantized and facts.int8_coverage is None and len(facts.sha256) == 64
    assert main(["inspect", str(files["mlp"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == facts.to_dict()

    out = files["dir"] / "mlp.dyn.onnx"
    res = api.quantize(files["mlp"], out, mode="dynamic")
    assert res.output_size_bytes < res.input_size_bytes
    q = api.inspect(out)
    assert q.quantized and q.int8_coverage is not None
    assert q.int8_coverage.quantized_compute_ops == q.int8_coverage.compute_ops == 2
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == q.to_dict()


def test_quantize_reports_calibration_progress(files: dict[str, Path]) -> None:
    calib = files["dir"] / "calib.npz"
    np.savez(calib, x=np.random.default_rng(2).standard_normal((6, 64)).astype(np.float32))
    seen: list[tuple[int, int | None]] = []
    res = api.quantize(files["mlp"], files["dir"] / "mlp.static.onnx", mode="static", calib=str(calib),
                       on_calib_sample=lambda done, total: seen.append((done, total)))
    assert res.config.mode == "static" and seen and seen[-1] == (6, 6)


# ---- evaluate -----------------------------------------------------------------------------------

def test_evaluate_identical_models_is_exact_and_matches_cli(files: dict[str, Path], tmp_path: Path) -> None:
    res = api.evaluate(files["cls"], str(files["labeled"]), reference=files["cls"])
    assert isinstance(res, api.EvalResult)
    assert res.fidelity is not None and res.fidelity.cosine == pytest.approx(1.0)
    assert res.fidelity.max_abs_err == 0.0 and res.fidelity.top1_agreement == 1.0
    assert res.samples == 12 and res.has_labels and not res.synthetic
    assert res.accuracy is not None and res.accuracy["metric"] == "top1" and res.accuracy["drop"] == 0.0
    assert res.session.intra_op_threads == api.DEFAULT_THREADS == res.machine["threads"]

    out = tmp_path / "eval.json"
    assert main(["eval", str(files["cls"]), "--data", str(files["labeled"]), "--reference", str(files["cls"]),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == _json(res.to_dict())


def test_evaluate_metric_rule(files: dict[str, Path]) -> None:
    # no labels: fidelity only, no task metric
    res = api.evaluate(files["cls"], str(files["unlabeled"]), reference=files["cls"], limit=5)
    assert res.accuracy is None and res.samples == 5 and not res.has_labels
    # synthetic data: never a task metric, even one asked for (choose_metric's rule)
    res = api.evaluate(files["cls"], "random:3", reference=files["cls"], metric="top1")
    assert res.synthetic and res.accuracy is None and any("synthetic" in n for n in res.notes)
    with pytest.raises(EdgequantError, match="nothing to measure"):
        api.evaluate(files["cls"], str(files["unlabeled"]))
    with pytest.raises(EdgequantError, match="nothing to measure"):
        api.evaluate(files["cls"], "random:3", metric="top1")
    with pytest.raises(EdgequantError, match="no_such_mod"):  # a typo fails even where no metric is used
        api.evaluate(files["cls"], "random:3", reference=files["cls"], metric="no_such_mod:f")


# ---- bench --------------------------------------------------------------------------------------

def test_bench_fast_model_is_faster_and_matches_cli(files: dict[str, Path], tmp_path: Path) -> None:
    slow, fast = files["slow"], files["fast"]
    messages: list[str] = []
    res = api.bench([slow, fast], runs=15, warmup=1, min_time_s=0.0, memory=True, progress=messages.append)
    assert isinstance(res, api.BenchReport)
    first, second = res.models
    assert (first.name, second.name) == ("slow.onnx", "fast.onnx")
    assert first.speedup.ratio == 1.0 and second.speedup.ratio > 1.0 and second.speedup.faster_than_noise
    assert second.latency.p50 < first.latency.p50 and len(second.latency.samples_ms) == 15
    assert first.size_bytes > second.size_bytes
    assert res.memory is not None and res.memory.baseline_rss_mb > 0
    assert second.memory is not None and second.memory.delta_mb == pytest.approx(
        second.memory.peak_rss_mb - res.memory.baseline_rss_mb)
    assert res.input == api.BenchInput("random:1", default=True, synthetic=True)
    assert not res.swept and [r.threads for r in res.sweep] == [1]
    assert any("timing 2 model(s)" in m for m in messages) and any("peak memory" in m for m in messages)

    out = tmp_path / "bench.json"
    assert main(["bench", str(slow), str(fast), "--runs", "15", "--min-time", "0", "--warmup", "1",
                 "--json", str(out)]) == 0
    cli_doc = json.loads(out.read_text())
    assert _without_timings(cli_doc) == _without_timings(_json(res.to_dict()))
    assert cli_doc["models"][1]["speedup"] > 1.0


def test_bench_sweep_session_and_keywords(files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((2, 32, 128), np.float32))
    res = api.bench([files["slow"]], input=str(data), runs=3, warmup=0, threads_sweep=[1, 2],
                    session=api.SessionConfig(graph_optimization="basic"))
    assert [r.threads for r in res.sweep] == [1, 2] and res.swept and res.memory is None
    assert res.session.intra_op_threads == 1 and res.session.graph_optimization == "basic"
    doc = _json(res.to_dict())
    assert doc["schema"] == "edgequant.bench/1" and doc["input"]["synthetic"] is False
    assert [b["threads"] for b in doc["threads_sweep"]] == [1, 2] and doc["models"][0]["peak_memory_mb"] is None
    with pytest.raises(EdgequantError, match="nope.onnx"):
        api.bench([files["slow"], tmp_path / "nope.onnx"])


# ---- run / fleet wrappers -----------------------------------------------------------------------

def test_fleet_reports_progress_and_failures(files: dict[str, Path], tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(0, 1, (8, 64)).astype(np.float32))
    fy = tmp_path / "fleet.yaml"
    fy.write_text(f"defaults: {{runs: 5, warmup: 1, threads: 1}}\nmodels:\n"
                  f"  - {{name: mlp, model: {files['mlp']}, calib: {calib}}}\n"
                  f"  - {{name: broken, model: missing.onnx, calib: {calib}}}\n")
    assert [e.name for e in api.fleet_entries(fy)] == ["mlp", "broken"]
    seen: list[tuple[str, str]] = []
    res = api.fleet(fy, tmp_path / "out", progress=lambda name, msg: seen.append((name, msg)))
    assert isinstance(res, api.FleetResult)
    assert [o.status for o in res.outcomes] == ["done", "failed"] and [o.name for o in res.failed] == ["broken"]
    assert [r["name"] for r in res.summary["models"]] == ["mlp", "broken"]
    assert res.summary == json.loads((tmp_path / "out" / "fleet.json").read_text())
    assert seen and all(name == "mlp" for name, _ in seen)


# ---- one default, one layering ------------------------------------------------------------------

def test_measuring_commands_share_one_threads_default() -> None:
    from edgequant.cli import _register, cli

    _register()
    for name in ("eval", "bench", "run", "tune"):
        (opt,) = [p for p in cli.commands[name].params if p.name == "threads"]
        assert opt.default == api.DEFAULT_THREADS == 1, name
        assert opt.show_default, name


def _imports(path: Path) -> list[str]:
    """Absolute names of the edgequant modules ``path`` imports (relative imports resolved)."""
    package = ["edgequant", *path.relative_to(SRC).with_suffix("").parts][:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def test_layering_cli_sits_on_the_api() -> None:
    outside = [p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts[:1]
               and p.name != "__main__.py"]  # __main__ is `python -m edgequant`: the CLI's entry point
    offenders = [str(p.relative_to(SRC)) for p in outside
                 if any(m == "edgequant.cli" or m.startswith("edgequant.cli.") for m in _imports(p))]
    assert offenders == []
    commands = [p for p in (SRC / "cli").glob("*.py") if p.stem.endswith("_cmd") or p.stem == "doctor"]
    assert len(commands) >= 9  # doctor, devices, inspect, quantize, bench, eval, run, tune, fleet
    for p in commands:
        mods = _imports(p)
        assert "edgequant.api" in mods, p.name
        assert not any(m.startswith(("edgequant.pipeline", "edgequant.tune", "edgequant.fleet")) for m in mods), p.name
