"""`fleet --ray`: models as Ray tasks on a local two-node cluster bound to 127.0.0.1.

Needs the optional extra ``edgequant[ray]`` (``make test`` installs it); without it these tests
skip with the reason. One cluster for the module: a head without CPUs and two 1-CPU workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import onnx_models
from edgequant.fleet import run_fleet

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgequant[ray]'; make test does)")

from edgequant.scaleout import local_cluster, ray_executor  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=2, cpus_per_worker=1, object_store_mb=200) as address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        yield address


def _fleet(tmp: Path, names: list[str], *, size: int = 16, runs: int = 5) -> Path:
    rng = np.random.default_rng(0)
    onnx_models.save(onnx_models.conv_net(opset=13, channels=16, size=size), tmp / "conv.onnx")
    onnx_models.save(onnx_models.matmul_net(), tmp / "mlp.onnx")
    np.savez(tmp / "conv.npz", input=rng.normal(0, 1, (8, 3, size, size)).astype(np.float32))
    np.savez(tmp / "mlp.npz", x=rng.normal(0, 1, (8, 64)).astype(np.float32))
    lines = [f"defaults: {{runs: {runs}, warmup: 1, threads: 1}}", "models:"]
    for name in names:
        kind = "conv" if name.startswith("conv") else "mlp"
        lines.append(f"  - {{name: {name}, model: {kind}.onnx, calib: {kind}.npz}}")
    fy = tmp / "fleet.yaml"
    fy.write_text("\n".join(lines) + "\n")
    return fy


def test_fleet_runs_on_both_nodes_and_resumes(cluster, tmp_path: Path) -> None:
    fy = _fleet(tmp_path, ["conv_a", "mlp_a", "conv_b", "mlp_b"])
    out = tmp_path / "out"
    outcomes = run_fleet(fy, out, executor=ray_executor(cluster))
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    summary = json.loads((out / "fleet.json").read_text())
    nodes = {r["executed_on"]["node_id"] for r in summary["models"]}
    assert len(nodes) == 2                                  # both workers ran models
    assert all(r["executed_on"]["ip"] == "127.0.0.1" for r in summary["models"])
    report = json.loads((out / "conv_a" / "report.json").read_text())
    assert report["executed_on"]["node_id"] in nodes and report["executed_on"]["isa"]
    variant_paths = [Path(v["path"]) for v in report["variants"]]
    assert all(p.is_file() for p in variant_paths) and all(str(out) in str(p) for p in variant_paths[1:])
    assert str(Path(report["model"]["path"])) == str(tmp_path / "conv.onnx")   # the driver's path, not the node's
    assert (out / "conv_a" / ".fingerprint").is_file() and (out / "index.html").is_file()
    assert not list(out.rglob(".*.tmp"))                   # no partial files

    again = run_fleet(fy, out, executor=ray_executor(cluster))   # resume: nothing left to run
    assert [o.status for o in again] == ["up to date"] * 4


def test_a_failing_model_fails_alone_on_the_cluster(cluster, tmp_path: Path) -> None:
    fy = _fleet(tmp_path, ["conv_a", "mlp_a"])
    fy.write_text(fy.read_text() + "  - {name: bad, model: conv.onnx, calib: mlp.npz}\n")   # wrong inputs
    outcomes = {o.name: o for o in run_fleet(fy, tmp_path / "out", executor=ray_executor(cluster))}
    assert outcomes["conv_a"].status == outcomes["mlp_a"].status == "done"
    assert outcomes["bad"].status == "failed" and "input" in outcomes["bad"].error


def test_cli_fleet_ray_and_the_missing_extra(cluster, tmp_path: Path, monkeypatch) -> None:
    fy = _fleet(tmp_path, ["mlp_a"])
    proc = subprocess.run([sys.executable, "-m", "edgequant", "fleet", str(fy), "-o", str(tmp_path / "cli"),
                           "--ray", cluster], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "cli" / "fleet.json").read_text())["models"][0]["executed_on"]["node_id"]

    from edgequant.errors import EdgequantError
    from edgequant.scaleout import cluster as cluster_mod

    monkeypatch.setitem(sys.modules, "ray", None)          # as if the extra were not installed
    with pytest.raises(EdgequantError, match=r"pip install 'edgequant\[ray\]'"):
        cluster_mod.import_ray()


def test_a_ray_task_uses_the_cpus_it_was_assigned(cluster) -> None:
    """Ray reserves num_cpus but does not confine a task: edgequant's sessions follow the reservation."""
    def allowance_in_task() -> int | None:   # defined here: Ray ships it by value (no test module there)
        import ray as worker_ray

        from edgequant.devices._ray import use_assigned_cpus
        from edgequant.measure.session import cpu_allowance

        use_assigned_cpus(worker_ray)
        return cpu_allowance()

    assert ray.get(ray.remote(allowance_in_task).options(num_cpus=1).remote()) == 1


def test_tune_quantizes_candidates_as_ray_tasks(cluster, tmp_path: Path) -> None:
    """tune --ray: candidates are quantized on the workers (two at a time), quality and timing
    here; the cache makes a second run quantize nothing."""
    from edgequant import api
    from edgequant.pipeline import RunOptions
    from edgequant.tune import TuneOptions

    rng = np.random.default_rng(0)
    onnx_models.save(onnx_models.conv_net(opset=13, channels=16, size=16), tmp_path / "conv.onnx")
    np.savez(tmp_path / "conv.npz", input=rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32))
    options = TuneOptions(run=RunOptions(target="x86-vnni", runs=5, warmup=1, memory_runs=2),
                          trial_runs=4, trial_warmup=1, workers=2, max_candidates=4)
    out = tmp_path / "tune"
    said: list[str] = []
    report = api.tune(tmp_path / "conv.onnx", out, calib=str(tmp_path / "conv.npz"), eval=str(tmp_path / "conv.npz"),
                      options=options, ray=cluster, progress=said.append)
    assert not [m for m in said if m.startswith("measuring")]     # quality measured in the tasks
    assert all(r.get("fidelity") for r in report["search_trace"] if not r.get("error"))
    quantized_on = {r["quantized_on"] for r in report["search_trace"]}
    assert None not in quantized_on and len(quantized_on) >= 1
    assert all(Path(v["path"]).is_file() for v in report["variants"])
    again = api.tune(tmp_path / "conv.onnx", out, calib=str(tmp_path / "conv.npz"), eval=str(tmp_path / "conv.npz"),
                     options=options, ray=cluster)
    assert again["tune"]["quantized_now"] == 0          # resumed from the driver's cache


def test_concurrent_tune_batches_share_one_concurrency_limit(cluster, tmp_path: Path) -> None:
    """tune starts the next stage's batch while another runs: with max_concurrency=1 the two
    batches' tasks still run one at a time (never two on a 2-node cluster), and all finish."""
    import threading

    from edgequant.jobs import CalibSpec, QuantizeJob
    from edgequant.quantize import make_config
    from edgequant.scaleout.tune_tasks import ray_quantize_batch

    rng = np.random.default_rng(0)
    onnx_models.save(onnx_models.matmul_net(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "mlp.npz", x=rng.normal(0, 1, (8, 64)).astype(np.float32))
    calib = CalibSpec(str(tmp_path / "mlp.npz"), 8, None)
    jobs = [QuantizeJob(tmp_path / "mlp.onnx", tmp_path / f"q{i}.onnx", make_config("static", "x86-vnni"), calib)
            for i in range(4)]
    quantize_batch = ray_quantize_batch(cluster, max_concurrency=1)
    results: dict[int, list[dict]] = {}

    def batch(k: int) -> None:
        results[k] = quantize_batch(jobs[2 * k:2 * k + 2], 2)

    threads = [threading.Thread(target=batch, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    ran = sorted(r["ran"] for k in (0, 1) for r in results[k])
    assert len(ran) == 4 and all(r["ok"] for k in (0, 1) for r in results[k])
    assert all(a[1] <= b[0] for a, b in zip(ran, ran[1:])), ran      # one slot: no two tasks at once
    assert all((tmp_path / f"q{i}.onnx").is_file() for i in range(4))


def test_tune_quality_falls_back_to_the_driver_when_workers_cannot_load_the_metric(cluster, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """A metric module only the driver can import: the tasks still quantize, the driver measures."""
    from edgequant import api
    from edgequant.pipeline import RunOptions
    from edgequant.tune import TuneOptions

    rng = np.random.default_rng(1)
    onnx_models.save(onnx_models.conv_net(opset=13, channels=16, size=16), tmp_path / "conv.onnx")
    np.savez(tmp_path / "conv.npz", input=rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32))
    (tmp_path / "driver_only_metric.py").write_text(
        "import numpy as np\n"
        "def mean_out(outputs, labels, reference):\n"
        "    return float(np.mean(next(iter(outputs.values())))), True\n")
    monkeypatch.syspath_prepend(str(tmp_path))          # the driver's path only: workers cannot import it
    options = TuneOptions(run=RunOptions(target="x86-vnni", runs=5, warmup=1, memory_runs=2,
                                         metric="driver_only_metric:mean_out"),
                          trial_runs=4, trial_warmup=1, workers=2, max_candidates=2)
    said: list[str] = []
    report = api.tune(tmp_path / "conv.onnx", tmp_path / "tune", calib=str(tmp_path / "conv.npz"),
                      eval=str(tmp_path / "conv.npz"), options=options, ray=cluster, progress=said.append)
    assert [m for m in said if m.startswith("measuring")]
    assert all(r["quantized_on"] for r in report["search_trace"])


def test_a_worker_node_killed_mid_fleet_does_not_stop_it(cluster, tmp_path: Path) -> None:
    """Tasks of a node that dies are retried on the survivors; the fleet finishes."""
    from ray.cluster_utils import Cluster  # noqa: F401 - the fixture's kind of cluster

    node_cluster = _owner(cluster)
    doomed = node_cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    node_cluster.wait_for_nodes()
    fy = _fleet(tmp_path, [f"conv_{i}" for i in range(5)], runs=30)

    def kill_soon() -> None:
        time.sleep(4.0)
        node_cluster.remove_node(doomed, allow_graceful=False)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    outcomes = run_fleet(fy, tmp_path / "out", executor=ray_executor(cluster))
    killer.join()
    assert all(o.status == "done" for o in outcomes), [(o.name, o.error) for o in outcomes]
    assert doomed not in node_cluster.worker_nodes


def _owner(address: str):
    from edgequant.scaleout import cluster as cluster_mod

    return cluster_mod.active_cluster(address)


@pytest.fixture(scope="module")
def board(cluster):
    """A third node that joined as a board: no CPUs for tasks, the resource edgequant_device:board1."""
    node_cluster = _owner(cluster)
    node = node_cluster.add_node(num_cpus=0, object_store_memory=100 * 2**20,
                                 resources={"edgequant_device:board1": 1})
    node_cluster.wait_for_nodes()
    yield node


def test_board_is_listed_and_measures_latency_on_its_node(cluster, board, tmp_path: Path) -> None:
    """`--device board1`: FP32 and variants are timed on the board's node (one actor), outputs
    too; the report names the device and every variant says latency came from board1."""
    from edgequant import api
    from edgequant.devices import get_device
    from edgequant.pipeline import RunOptions

    listed = {f.name: f for f in api.devices(ray=cluster)}
    assert listed["board1"].available and listed["board1"].can_time and "Ray node" in listed["board1"].why
    device = get_device("board1")
    assert device.location()["node_id"] == board.node_id      # the actor lives on the board's node

    rng = np.random.default_rng(0)
    onnx_models.save(onnx_models.matmul_net(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "mlp.npz", x=rng.normal(0, 1, (8, 64)).astype(np.float32))
    report = api.run(tmp_path / "mlp.onnx", tmp_path / "rep", calib=str(tmp_path / "mlp.npz"),
                     options=RunOptions(device="board1", runs=5, warmup=1, memory_runs=2))
    assert report["device"]["name"] == "board1" and report["device"]["kind"] == "ray-node"
    assert report["device"]["node"]["node_id"] == board.node_id and report["device"]["node"]["isa"]
    static = next(v for v in report["variants"] if v["name"] == "static")
    assert static["measured_on"] == {"outputs": "board1", "latency": "board1"}
    assert static["latency_ms"]["p50"] > 0 and static["peak_memory_mb"] > 0
    assert Path(static["path"]).parent == tmp_path / "rep"     # the caller's file, not the board's copy


def test_a_vanished_board_is_one_clear_error(cluster, tmp_path: Path) -> None:
    from edgequant.devices import get_device
    from edgequant.errors import EdgequantError

    with pytest.raises(EdgequantError, match="unknown device 'board9'"):
        get_device("board9")


def test_fleet_on_ray_measures_latency_on_the_board(cluster, board, tmp_path: Path) -> None:
    """A fleet entry with `device: board1`: quantized on a CPU worker, timed on the board."""
    fy = _fleet(tmp_path, ["mlp_a"])
    fy.write_text(fy.read_text().replace("calib: mlp.npz}", "calib: mlp.npz, device: board1}"))
    (outcome,) = run_fleet(fy, tmp_path / "out", executor=ray_executor(cluster))
    assert outcome.status == "done", outcome.error
    report = outcome.report
    assert report["executed_on"]["node_id"] != board.node_id            # quantized on a CPU worker
    assert report["device"]["node"]["node_id"] == board.node_id         # timed on the board
    assert all(v["measured_on"]["latency"] == "board1" for v in report["variants"])


def test_a_board_lost_mid_run_still_gives_a_report(cluster, tmp_path: Path, monkeypatch) -> None:
    """The board vanishes just before timing: outputs were measured on it, latency and memory
    come from this machine (each variant says so), a note names the loss, speed is not judged."""
    from edgequant import api
    from edgequant.devices import ray_node
    from edgequant.pipeline import RunOptions

    node_cluster = _owner(cluster)
    doomed = node_cluster.add_node(num_cpus=0, object_store_memory=100 * 2**20,
                                   resources={"edgequant_device:board2": 1})
    node_cluster.wait_for_nodes()
    original = ray_node.RayNodeDevice.time_interleaved

    def vanish_then_time(self, *args, **kwargs):
        if doomed in node_cluster.list_all_nodes():
            node_cluster.remove_node(doomed, allow_graceful=False)
            deadline = time.monotonic() + 60            # until the cluster knows (deterministic test)
            while time.monotonic() < deadline and any(
                    n["NodeID"] == doomed.node_id and n["Alive"] for n in ray.nodes()):
                time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ray_node.RayNodeDevice, "time_interleaved", vanish_then_time)
    rng = np.random.default_rng(0)
    onnx_models.save(onnx_models.matmul_net(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "mlp.npz", x=rng.normal(0, 1, (8, 64)).astype(np.float32))
    report = api.run(tmp_path / "mlp.onnx", tmp_path / "rep", calib=str(tmp_path / "mlp.npz"),
                     options=RunOptions(device="board2", runs=5, warmup=1, memory_runs=2))
    static = next(v for v in report["variants"] if v["name"] == "static")
    assert static["measured_on"] == {"outputs": "board2", "latency": "cpu"}
    assert any("board2 was lost while measuring latency" in n for n in report["notes"])
    assert report["device"]["node"]["lost"] is True
    assert (tmp_path / "rep" / "report.html").is_file()
