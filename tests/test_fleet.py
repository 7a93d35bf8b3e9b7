import json

import numpy as np
import onnx
import pytest

import onnx_models
from edgequant.errors import EdgequantError
from edgequant.fleet import load_fleet, run_fleet


@pytest.fixture
def fleet_dir(tmp_path):
    onnx_models.save(onnx_models.conv_net(opset=13, channels=32, size=16), tmp_path / "conv.onnx")
    onnx_models.save(onnx_models.matmul_net(), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "conv_calib.npz", input=rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "mlp_calib.npz", x=rng.normal(0, 1, (8, 64)).astype(np.float32))
    return tmp_path


def _write(path, text):
    path.write_text(text)
    return path


FLEET = """
defaults: {runs: 5, warmup: 1, threads: 1}
models:
  - {name: conv, model: conv.onnx, calib: conv_calib.npz}
  - {name: broken, model: missing.onnx, calib: conv_calib.npz}
  - {name: mlp, model: mlp.onnx, calib: mlp_calib.npz, budget: {min_cosine: 0.98}}
"""


def test_failing_model_is_reported_and_others_go_on(fleet_dir):
    fy = _write(fleet_dir / "fleet.yaml", FLEET)
    out = fleet_dir / "out"
    outcomes = {o.name: o for o in run_fleet(fy, out)}
    assert outcomes["conv"].status == "done" and outcomes["mlp"].status == "done"
    assert outcomes["broken"].status == "failed" and "missing.onnx" in outcomes["broken"].error
    summary = json.loads((out / "fleet.json").read_text())
    assert [r["name"] for r in summary["models"]] == ["conv", "broken", "mlp"]
    html = (out / "index.html").read_text()
    assert "conv/report.html" in html and "failed" in html
    assert (out / "conv" / "report.json").is_file() and (out / "mlp" / "report.json").is_file()

    # Re-run: finished models are up to date unless forced; the failed one is retried.
    again = {o.name: o.status for o in run_fleet(fy, out)}
    assert again == {"conv": "up to date", "broken": "failed", "mlp": "up to date"}
    forced = {o.name: o.status for o in run_fleet(fy, out, force=True)}
    assert forced["conv"] == "done"


def test_changed_entry_is_rerun(fleet_dir):
    fy = _write(fleet_dir / "fleet.yaml", "models:\n  - {name: mlp, model: mlp.onnx, calib: mlp_calib.npz, runs: 5, warmup: 1}\n")
    out = fleet_dir / "out"
    run_fleet(fy, out)
    _write(fy, "models:\n  - {name: mlp, model: mlp.onnx, calib: mlp_calib.npz, runs: 6, warmup: 1}\n")
    assert [o.status for o in run_fleet(fy, out)] == ["done"]


def test_new_data_or_a_new_tool_reruns_a_finished_model(fleet_dir, monkeypatch):
    from edgequant import provenance

    fy = _write(fleet_dir / "fleet.yaml", "models:\n  - {name: mlp, model: mlp.onnx, calib: mlp_calib.npz, runs: 5, warmup: 1}\n")
    out = fleet_dir / "out"
    run_fleet(fy, out)
    assert [o.status for o in run_fleet(fy, out)] == ["up to date"]
    # the same file name with other samples
    np.savez(fleet_dir / "mlp_calib.npz", x=np.random.default_rng(1).normal(0, 1, (8, 64)).astype(np.float32))
    assert [o.status for o in run_fleet(fy, out)] == ["done"]
    # an edgequant (or onnxruntime) that is not the one that wrote the report
    monkeypatch.setattr(provenance, "tool_fingerprint", lambda: "another edgequant")
    assert [o.status for o in run_fleet(fy, out)] == ["done"]
    assert [o.status for o in run_fleet(fy, out)] == ["up to date"]


@pytest.mark.parametrize("text, needle", [
    ("models: []", "non-empty 'models'"),
    ("models:\n  - {name: a, model: m.onnx}", "'calib' is required"),
    ("models:\n  - {name: a, model: m.onnx, calib: c.npz, colour: red}", "unknown key"),
    ("models:\n  - {name: a, model: m.onnx, calib: c.npz, budget: {max_drop: high}}", "budget.max_drop"),
    ("models:\n  - {name: a, model: m.onnx, calib: c.npz, target: riscv}", "target"),
    ("models:\n  - {name: ../evil, model: m.onnx, calib: c.npz}", "name"),
    ("models:\n  - {name: a, model: m.onnx, calib: c.npz}\n  - {name: a, model: n.onnx, calib: c.npz}", "duplicate"),
    ("models: [unclosed", "not valid YAML"),
    ("models:\n  - {name: a, model: m.onnx, calib: c.npz, burst: 0}", "burst"),
])
def test_invalid_yaml_gives_clear_errors(tmp_path, text, needle):
    fy = _write(tmp_path / "f.yaml", text)
    with pytest.raises(EdgequantError, match="f.yaml") as exc:
        load_fleet(fy)
    assert needle in str(exc.value)


def test_cli_fleet_exit_code_and_summary(fleet_dir):
    import subprocess
    import sys

    fy = _write(fleet_dir / "fleet.yaml", FLEET)
    proc = subprocess.run([sys.executable, "-m", "edgequant", "fleet", str(fy), "-o", str(fleet_dir / "o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1  # one model failed
    assert "conv" in proc.stdout and "mlp" in proc.stdout and "failed" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_files_fail_before_any_work_and_the_cli_says_how_many(fleet_dir):
    import subprocess
    import sys

    fy = _write(fleet_dir / "fleet.yaml", FLEET)
    proc = subprocess.run([sys.executable, "-m", "edgequant", "fleet", str(fy), "-o", str(fleet_dir / "o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert "broken" in first and "missing.onnx" in first and "no such file" in first    # up front, on stderr
    assert "1 of 3 models failed: broken" in proc.stderr
    assert not (fleet_dir / "o" / "broken").exists()                                    # no work started for it


def test_fleet_entry_sets_tune_options(fleet_dir):
    """float_fallback, qat_minutes and burst reach tune; a bad value names the entry."""
    fy = _write(fleet_dir / "f.yaml", "defaults: {tune: true, qat_minutes: 0}\nmodels:\n"
                "  - {name: conv, model: conv.onnx, calib: conv_calib.npz, float_fallback: false}\n"
                "  - {name: mlp, model: mlp.onnx, calib: mlp_calib.npz, qat_minutes: 2.5, burst: 4}\n")
    entries = {e.name: e for e in load_fleet(fy)}
    assert (entries["mlp"].options.burst, entries["conv"].options.burst) == (4, 1)   # the timing regime too
    assert (entries["conv"].qat_minutes, entries["conv"].float_fallback) == (0, False)
    assert (entries["mlp"].qat_minutes, entries["mlp"].float_fallback) == (2.5, None)
    bad = _write(fleet_dir / "bad.yaml", "models:\n  - {name: conv, model: conv.onnx, calib: conv_calib.npz, "
                 "qat_minutes: -1}\n")
    with pytest.raises(EdgequantError, match="qat_minutes"):
        load_fleet(bad)


def test_parallel_workers_get_the_longest_models_first(fleet_dir):
    """LPT order for parallel executors: the bigger graph first on a first run, then the last
    run's measured times (recorded per model in fleet.json)."""
    from edgequant.fleet import longest_first

    fy = _write(fleet_dir / "fleet.yaml", FLEET.replace("  - {name: broken, model: missing.onnx, calib: conv_calib.npz}\n", ""))
    entries = load_fleet(fy)
    nodes = {e.name: len(onnx.load(str(e.model)).graph.node) for e in entries}
    out = fleet_dir / "out"
    by_size = [e.name for e in longest_first(entries, out)]
    assert by_size == sorted(nodes, key=lambda n: -nodes[n])
    outcomes = run_fleet(fy, out)
    rows = {r["name"]: r for r in json.loads((out / "fleet.json").read_text())["models"]}
    assert all(o.elapsed_s and o.elapsed_s > 0 and rows[o.name]["elapsed_s"] == o.elapsed_s for o in outcomes)
    summary = json.loads((out / "fleet.json").read_text())
    slow = by_size[-1]                      # make the smaller graph the one that took longest last time
    for row in summary["models"]:
        row["elapsed_s"] = 100.0 if row["name"] == slow else 1.0
    (out / "fleet.json").write_text(json.dumps(summary))
    assert [e.name for e in longest_first(entries, out)][0] == slow
