"""Streaming histogram calibration (percentile, entropy, distribution): the same ranges as
onnxruntime's HistogramCalibrater, in memory that does not grow with the sample count."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models  # noqa: E402

from edgequant import quantize as quantize_mod
from edgequant.algorithms.histogram import StreamingHistogram, tensor_range
from edgequant.quantize import make_config, quantize_model


def _batches(seed: int = 0) -> list[np.ndarray]:
    """Heavy-tailed samples whose range keeps growing (so the histogram re-bins several times),
    starting with an all-zero sample (no range at all yet)."""
    rng = np.random.default_rng(seed)
    out = [np.zeros(4000, np.float32)]
    out += [(rng.standard_t(3, 4000) * (1 + 0.5 * i) + 0.2).astype(np.float32) for i in range(20)]
    out.append(np.maximum(out[3], 0))
    return out


def test_streaming_histogram_equals_one_shot_histogram_after_rebinning() -> None:
    batches = _batches()
    h = StreamingHistogram(bins=4096)
    grew = set()
    for b in batches:
        h.add(b)
        grew.add(h.half)
    assert len(grew) >= 3                                  # the range really grew (and re-binned)
    everything = np.concatenate(batches)
    one_shot, _ = np.histogram(everything, bins=h.bins, range=(-h.half, h.half))
    # re-binning merges whole bins, so every value is in the bin a one-shot histogram puts it in
    # (a value on a bin edge may land one bin over through float rounding: none do here)
    assert np.abs(one_shot - h.counts).sum() == 0
    assert h.counts.sum() == everything.size
    assert (h.lo, h.hi) == (float(everything.min()), float(everything.max()))
    assert h.half < 2 * h.absmax                           # resolution stays within 2x of the data's


def test_large_tensors_are_histogrammed_in_chunks(monkeypatch) -> None:
    from edgequant.algorithms import histogram

    whole = StreamingHistogram(bins=1024)
    for b in _batches(2):
        whole.add(b)
    monkeypatch.setattr(histogram, "CHUNK", 999)            # bounded temporaries, same counts
    chunked = StreamingHistogram(bins=1024)
    for b in _batches(2):
        chunked.add(b)
    assert np.array_equal(whole.counts, chunked.counts) and whole.half == chunked.half


@pytest.mark.parametrize("method,symmetric,bins,qbins", [
    ("percentile", True, 2048, None),      # ORT's percentile defaults
    ("percentile", False, 2048, None),
    ("entropy", False, 128, 128),          # ORT's entropy defaults (one candidate: min/max)
    ("entropy", False, 2048, 128),         # a real KL threshold search
    ("distribution", False, 2048, None),
])
def test_ranges_match_onnxruntime_histogram_collector(method: str, symmetric: bool, bins: int, qbins: int | None) -> None:
    """ORT histograms all samples at once; ours streamed. Tolerance: one of ORT's bins, because
    ORT's rule returns a bin edge of its own histogram, which ours is re-sampled onto."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    batches = _batches(1)
    h = StreamingHistogram()
    for b in batches:
        h.add(b)
    ort = HistogramCollector(method, symmetric, bins, qbins or 128, 99.99, "same")
    ort.collect({"t": batches})
    res = ort.compute_collection_result()["t"]
    expected = (float(res[0]), float(res[1])) if isinstance(res, tuple) else tuple(map(float, res.range_value))
    got = tensor_range(h, method, percentile=99.99, symmetric=symmetric, bins=bins, quantized_bins=qbins)
    everything = np.abs(np.concatenate(batches))
    bin_width = (everything.max() - everything.min()) / bins if symmetric else 2 * everything.max() / bins
    tol = bin_width * 1.001                                 # float32 edges: "one bin" up to rounding
    assert abs(got[0] - expected[0]) <= tol and abs(got[1] - expected[1]) <= tol, (got, expected)
    if method == "entropy" and bins == 2048:
        assert got[1] < 0.5 * everything.max()              # the search clipped the tails


# ---- through quantize_model -------------------------------------------------------------------

def _activation_qparams(path: Path) -> dict[str, tuple[float, int]]:
    """Scale and zero point of every activation QuantizeLinear (weights have no Q node)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]) if len(n.input) > 2 else 0)
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits}


def _calib(tmp_path: Path, n: int, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    path = tmp_path / f"calib{n}.npz"
    np.savez(path, input=rng.normal(0, 1, (n, 1, 3, 16, 16)).astype(np.float32))
    return path


def _source(model: Path, calib: Path):
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    return open_source(str(calib), graph_inputs(load_model(model)))


@pytest.mark.parametrize("method,target", [("percentile", "x86-vnni"), ("entropy", "x86-vnni"),
                                           ("distribution", "x86-vnni"), ("percentile", "qnn")])
def test_quantized_model_has_onnxruntimes_ranges(tmp_path: Path, monkeypatch, method: str, target: str) -> None:
    """The whole recipe, streaming vs onnxruntime's own HistogramCalibrater (the old path): every
    activation's scale agrees. Percentile: within 1% (one of ORT's 2048 bins moves a range by
    <= 1/2048 of the absmax, a few such bins at most on these ranges); entropy and distribution
    reduce to min/max and absmax with ORT's defaults: within float rounding. Except, on purpose:
    distribution's Relu outputs start at 0 (ORT's -absmax there breaks its own Relu removal)."""
    proto = onnx_models.conv_net(opset=13, channels=16)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1    # qnn needs static shapes
    model = onnx_models.save(proto, tmp_path / "m.onnx")
    src = _source(model, _calib(tmp_path, 12))
    config = make_config("static", target, calib_method=method)
    ours = quantize_model(model, tmp_path / "ours.onnx", config, src)
    assert any("streaming histograms over 12" in n for n in ours.notes), ours.notes
    monkeypatch.setattr(quantize_mod, "HISTOGRAM_METHODS", ())   # back to ORT's calibrator
    quantize_model(model, tmp_path / "ort.onnx", config, src)
    got, want = _activation_qparams(tmp_path / "ours.onnx"), _activation_qparams(tmp_path / "ort.onnx")
    assert got.keys() == want.keys() and len(want) >= 5
    rtol = 0.01 if method == "percentile" else 1e-5
    for name, (scale, zp) in want.items():
        if method == "distribution" and name.startswith("relu"):
            assert got[name][1] == 0 and want[name][1] == 128, name   # [0, absmax] vs [-absmax, absmax]
            assert got[name][0] == pytest.approx(scale / 2, rel=0.01), name
            continue
        assert got[name][0] == pytest.approx(scale, rel=rtol), name
        assert abs(got[name][1] - zp) <= 1, name


def test_onnxruntimes_histogram_calibrater_is_not_used(tmp_path: Path, monkeypatch) -> None:
    from onnxruntime.quantization import calibrate

    def refuse(*_a, **_k):
        raise AssertionError("HistogramCalibrater holds every sample's tensors")

    monkeypatch.setattr(calibrate.HistogramCalibrater, "collect_data", refuse)
    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=8), tmp_path / "m.onnx")
    src = _source(model, _calib(tmp_path, 4))
    for method in ("percentile", "entropy", "distribution"):
        for fmt in ("qdq", "qoperator"):
            quantize_model(model, tmp_path / f"{method}.{fmt}.onnx",
                           make_config("static", "x86-vnni", calib_method=method, quant_format=fmt), src)


@pytest.mark.parametrize("method", ["percentile", "entropy", "distribution"])
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_each_histogram_method_gives_a_working_model(tmp_path: Path, method: str, fmt: str) -> None:
    from edgequant.devices import local_cpu

    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=16), tmp_path / "m.onnx")
    src = _source(model, _calib(tmp_path, 8))
    out = tmp_path / "q.onnx"
    res = quantize_model(model, out, make_config("static", "x86-vnni", calib_method=method, quant_format=fmt), src)
    assert not any("nothing was quantized" in w for w in res.warnings)
    x = np.random.default_rng(9).normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32)
    ref = local_cpu().outputs([model], [{"input": xi} for xi in x]).outputs[0]["logits"].ravel()
    got = local_cpu().outputs([out], [{"input": xi} for xi in x]).outputs[0]["logits"].ravel()
    assert float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99


def _peak_traced(model: Path, calib: Path, out: Path) -> int:
    src = _source(model, calib)
    tracemalloc.start()
    try:
        quantize_model(model, out, make_config("static", "x86-vnni", calib_method="percentile"), src)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_sample_count(tmp_path: Path) -> None:
    """ORT's HistogramCalibrater keeps every sample's intermediate tensors (here 3 x 64x32x32
    floats, ~0.8 MB per sample): 8 -> 64 samples would add ~45 MB of traced numpy memory. The
    streaming histograms hold one sample at a time."""
    model = onnx_models.save(onnx_models.conv_net(opset=13, channels=64, size=32), tmp_path / "m.onnx")

    def calib(n: int) -> Path:
        path = tmp_path / f"c{n}.npz"
        np.savez(path, input=np.random.default_rng(n).normal(0, 1, (n, 1, 3, 32, 32)).astype(np.float32))
        return path

    few = _peak_traced(model, calib(8), tmp_path / "few.onnx")
    many = _peak_traced(model, calib(64), tmp_path / "many.onnx")
    assert many < few + 8 * 2**20, (few, many)      # 56 more samples: well under 10 samples' tensors


def test_a_percentile_outside_0_100_is_one_clear_error() -> None:
    from edgequant.errors import EdgequantError

    with pytest.raises(EdgequantError, match=r"percentile must be in \(0, 100\], got 150"):
        make_config("static", "x86-vnni", calib_method="percentile", calib_percentile=150.0)
