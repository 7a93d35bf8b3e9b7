"""Robust activation ranges: a few outlying calibration samples must not set a tensor's range."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_measure_fixtures import mlp  # noqa: E402

from edgequant.algorithms.ranges import aggregate
from edgequant.quantize import make_config, quantize_model


def test_well_behaved_tensor_keeps_the_global_range() -> None:
    rng = np.random.default_rng(0)
    lows, highs = -1 - rng.random(50) * 0.3, 1 + rng.random(50) * 0.3
    assert aggregate(lows, highs) == (lows.min(), highs.max(), 0)


def test_outlying_samples_saturate_and_the_range_settles() -> None:
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = -1 - rng.random(n) * 0.2, 1 + rng.random(n) * 0.2
        k = max(1, n // 50)                       # 2% of the inputs blow the activations up
        highs[:k] = rng.uniform(500, 3000, k)
        return lows, highs

    small, large = aggregate(*draw(20)), aggregate(*draw(400))
    assert small[1] < 1.3 and large[1] < 1.3              # not the 500-3000 of the outliers
    assert small[2] >= 1 and large[2] >= 8                  # those samples are reported as saturating
    assert abs(small[1] - large[1]) < 0.15                  # 20 or 400 samples: the same range


def _data(path: Path, *, outliers: int, n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, 16)).astype(np.float32)
    x[:outliers] *= 400.0                                   # a few inputs far outside the usual scale
    np.savez(path, x=x)
    return path


def _sqnr(model: Path, quant: Path, x: np.ndarray) -> float:
    from edgequant.devices import local_cpu

    ref = local_cpu().outputs([model], [{"x": xi} for xi in x]).outputs[0]["y"]
    got = local_cpu().outputs([quant], [{"x": xi} for xi in x]).outputs[0]["y"]
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


@pytest.mark.parametrize("target", ["x86-vnni", "qnn"])
def test_planted_outlier_samples_no_longer_destroy_static_quantization(tmp_path: Path, target: str) -> None:
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    model = mlp(tmp_path / "m.onnx", layers=3, width=16, classes=8)
    calib = _data(tmp_path / "calib.npz", outliers=3)
    src = open_source(str(calib), graph_inputs(load_model(model)))
    plain, robust = tmp_path / "plain.onnx", tmp_path / "robust.onnx"
    quantize_model(model, plain, make_config("static", target, robust_ranges=False), src)
    res = quantize_model(model, robust, make_config("static", target), src)
    assert any("robust activation ranges" in n and "tensor(s)" in n for n in res.notes), res.notes
    x = np.random.default_rng(5).normal(0, 1, (32, 1, 16)).astype(np.float32)   # ordinary inputs
    assert _sqnr(model, robust, x) >= _sqnr(model, plain, x) + 10.0


def test_onnxruntime_calibrates_one_sample_once_every_range_is_ours(tmp_path: Path, monkeypatch) -> None:
    """Default static: robust min/max gives every activation's range, so ORT's own min/max pass (a
    second full calibration run in a session it builds with its default thread pool) reads one
    sample; the model equals the one from ORT's full pass up to float rounding of the scales."""
    import onnx
    from onnx import numpy_helper

    import edgequant.data as data
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model
    from edgequant.quantize_steps import covers_calibration, range_overrides

    model = mlp(tmp_path / "m.onnx", layers=3, width=16, classes=8)
    calib = _data(tmp_path / "calib.npz", outliers=0)
    src = open_source(str(calib), graph_inputs(load_model(model)))
    config = make_config("static", "x86-vnni")
    ranges = range_overrides(model, config, src, [])
    assert covers_calibration(model, config, ranges)
    assert not covers_calibration(model, config, dict(list(ranges.items())[1:]))   # one tensor short: ORT's pass runs

    served = []            # samples the calibration readers hand to ORT's calibrator

    def counting(source, **kw):
        reader = real(source, **kw)
        get_next = reader.get_next

        def counted():
            item = get_next()
            served.append(item is not None)
            return item
        reader.get_next = counted
        return reader
    real = data.calibration_reader
    monkeypatch.setattr(data, "calibration_reader", counting)
    quantize_model(model, tmp_path / "ours.onnx", config, src)
    assert sum(served) == 1
    monkeypatch.setattr("edgequant.quantize.covers_calibration", lambda *a: False)
    served.clear()
    quantize_model(model, tmp_path / "ort.onnx", config, src)
    assert sum(served) == 40                                # without the check: ORT's full pass

    def inits(p: Path) -> dict:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
    ours, ort = inits(tmp_path / "ours.onnx"), inits(tmp_path / "ort.onnx")
    assert ours.keys() == ort.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name].astype(np.float64), ort[name].astype(np.float64), rtol=1e-5, atol=1,
                                   err_msg=name)                    # scales to rounding, int8/int32 within a step


def test_in_graph_extrema_equal_the_exposed_tensors_and_follow_their_producers(tmp_path: Path) -> None:
    """Min/max reduced inside the graph (what range estimation runs) equal those of the exposed
    tensors, and each reduction runs right after its producer, so activations are not kept alive."""
    import onnx

    from edgequant.algorithms.ranges import robust_ranges
    from edgequant.devices import analysis_cpu, local_cpu
    from edgequant.qdq.graph import expose_reduced, expose_tensors

    model = mlp(tmp_path / "m.onnx", layers=3, width=16, classes=8)
    x = np.random.default_rng(2).normal(0, 1, (6, 1, 16)).astype(np.float32)
    samples = [{"x": xi} for xi in x]
    names = expose_tensors(model, tmp_path / "t.onnx")
    extrema = expose_reduced(model, tmp_path / "e.onnx")
    assert set(extrema) == set(names) and len(names) >= 6
    full = local_cpu().outputs([tmp_path / "t.onnx"], samples).outputs[0]
    ranges = robust_ranges(model, samples, analysis_cpu())
    for name in names:
        r = ranges.ranges[name]
        assert (r.global_rmin, r.global_rmax) == (float(full[name].min()), float(full[name].max())), name

    nodes = list(onnx.load(str(tmp_path / "e.onnx")).graph.node)
    position = {o: i for i, n in enumerate(nodes) for o in n.output}
    for name, (lo, hi) in extrema.items():
        before = position.get(name, -1)               # -1: a graph input
        assert {position[lo], position[hi]} == {before + 1, before + 2}, name


def test_analysis_sessions_run_without_arena_in_priority_order() -> None:
    from edgequant.devices import analysis_cpu
    from edgequant.measure.session import SessionConfig, session_options

    cfg = analysis_cpu(SessionConfig(intra_op_threads=1)).session
    assert cfg.intra_op_threads == 1 and not cfg.enable_mem_arena and cfg.execution_order == "priority"
    import onnxruntime as ort

    assert session_options(cfg).execution_order == ort.ExecutionOrder.PRIORITY_BASED
    with pytest.raises(Exception, match="execution order"):
        SessionConfig(execution_order="random")
