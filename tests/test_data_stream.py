"""Streaming: memory stays flat over a ~100 MB file, and the calibration reader drives onnxruntime."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgequant.data import calibration_reader, open_source
from edgequant.model import TensorSpec, graph_inputs

N, SHAPE = 2000, (3, 64, 64)  # 2000 x 48 KiB float32 = ~98 MB


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("big")
    # A short repeating pattern (inside zlib's 32 KiB window) keeps savez_compressed fast.
    base = np.resize(np.random.default_rng(0).standard_normal(256).astype(np.float32), SHAPE)
    data = np.broadcast_to(base, (N, *SHAPE)).copy()
    data[:, 0, 0, 0] = np.arange(N)  # and every sample is distinguishable
    paths = {"npz": d / "big.npz", "npz_compressed": d / "bigz.npz", "npy": d / "big.npy"}
    np.savez(paths["npz"], x=data, labels=np.arange(N))
    np.savez_compressed(paths["npz_compressed"], x=data)
    np.save(paths["npy"], data)
    del data
    return paths


@pytest.mark.parametrize("kind", ["npz", "npz_compressed", "npy"])
def test_memory_does_not_grow_with_samples(big_files, kind: str) -> None:
    path = big_files[kind]
    file_bytes = N * int(np.prod(SHAPE)) * 4
    src = open_source(path, [TensorSpec("x", np.dtype("float32"), ("batch", *SHAPE))])
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    try:
        seen = 0
        for i, sample in enumerate(src):
            assert sample.feeds["x"][0, 0, 0, 0] == i  # right sample, in order
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = psutil.Process().memory_info().rss - rss0
    assert seen == N
    assert peak < file_bytes / 50, f"python/numpy peak {peak / 1e6:.1f} MB while streaming {file_bytes / 1e6:.0f} MB"
    if kind != "npy":  # a memory map's touched pages count as (reclaimable) RSS; reads do not
        assert rss_growth < file_bytes / 4, f"RSS grew {rss_growth / 1e6:.1f} MB"


# --- calibration reader with onnxruntime ------------------------------------------------------------

def tiny_model(path: Path) -> onnx.ModelProto:
    """x[batch,4] @ W[4,3] + b -> Relu: the smallest graph quantize_static calibrates and rewrites."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def test_reader_get_next_rewind_and_progress(tmp_path: Path) -> None:
    data = np.random.default_rng(2).standard_normal((5, 4))
    np.savez(tmp_path / "c.npz", x=data)
    seen: list[int] = []
    reader = calibration_reader(open_source(tmp_path / "c.npz", graph_inputs(tiny_model(tmp_path / "m.onnx"))),
                                on_sample=seen.append)
    assert len(reader) == 5
    first = [reader.get_next() for _ in range(5)]
    assert reader.get_next() is None and reader.get_next() is None  # stays exhausted until rewind
    assert seen == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in first]), data.astype(np.float32))
    reader.get_next()
    reader.rewind()  # mid-pass rewind restarts from sample 0
    np.testing.assert_array_equal(reader.get_next()["x"], first[0]["x"])
    assert seen[-1] == 0
    reader.rewind()
    assert sum(1 for _ in reader) == 5  # ORT also iterates readers with for-loops


def test_quantize_static_calibrates_on_streamed_data(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    model_path, out = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    tiny_model(model_path)
    data = np.random.default_rng(3).uniform(-2.0, 6.0, (40, 4)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    src = open_source(tmp_path / "calib.npy", graph_inputs(onnx.load(model_path)))
    count: list[int] = []
    quantize_static(str(model_path), str(out), calibration_reader(src, on_sample=count.append),
                    quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax)
    assert count == list(range(40))  # every streamed sample went through calibration
    q = onnx.load(out)
    # The input's uint8 asymmetric MinMax scale must be derived from exactly the data we streamed.
    x_quant = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = float(numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == x_quant.input[1])))
    expected = (max(float(data.max()), 0.0) - min(float(data.min()), 0.0)) / 255
    assert scale == pytest.approx(expected, rel=1e-5)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, next(iter(src)).feeds)[0]
    assert y.shape == (1, 3) and np.isfinite(y).all()
