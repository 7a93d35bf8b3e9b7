"""Range overrides only for tensors onnxruntime's quantizer can see.

Calibration types a contrib op's output (com.microsoft:Inverse, a fused Attention) with
onnxruntime's symbolic inference and so finds a range for it; the quantizer reads ONNX's own
inference only, leaves that tensor float and refuses an override for it ("Tensor 'inv' in
TensorQuantOverrides is not present in the model"). Static quantization must still succeed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_models

from edgequant.data import open_source
from edgequant.model import graph_inputs
from edgequant.quantize import make_config, quantize_model
from edgequant.quantize_steps import quantizer_sees


def _inverse_matmul(path: Path) -> Path:
    return onnx_models.save(onnx_models.inverse_matmul(), path)


def test_overrides_for_unseen_contrib_outputs_are_dropped_and_typos_kept(tmp_path):
    src = _inverse_matmul(tmp_path / "m.onnx")
    extra = {"ActivationSymmetric": False,
             "TensorQuantOverrides": {"inv": [{"rmin": np.float32(-1), "rmax": np.float32(1)}],
                                      "x": [{"rmin": np.float32(-2), "rmax": np.float32(2)}],
                                      "no_such_tensor": [{"rmin": np.float32(0), "rmax": np.float32(1)}]}}
    kept = quantizer_sees(extra, src)
    assert set(kept["TensorQuantOverrides"]) == {"x", "no_such_tensor"}
    assert kept["ActivationSymmetric"] is False
    assert "inv" in extra["TensorQuantOverrides"]  # the caller's dict is not modified


def test_static_quantize_of_a_contrib_op_output_succeeds_and_stays_accurate(tmp_path):
    src = _inverse_matmul(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    x = (np.eye(4, dtype=np.float32) * 2 + rng.normal(0, 0.1, (16, 1, 4, 4))).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    out = tmp_path / "q.onnx"
    quantize_model(src, out, make_config("static", "x86-avx2"),
                   open_source(tmp_path / "c.npz", graph_inputs(onnx.load(str(src)))))
    q = onnx.load(str(out))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)  # the weight is INT8
    feeds = {"x": x[0]}
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    cos = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos > 0.99


def test_a_matmul_reading_a_contrib_output_is_quantized(tmp_path):
    """Preparation types the contrib op's output for the quantizer, so the MatMul reading it gets
    Q/DQ on its activation too (INT8 after onnxruntime's fusion), not only a dequantized weight."""
    src = _inverse_matmul(tmp_path / "m.onnx")
    x = (np.eye(4, dtype=np.float32) * 2 + np.random.default_rng(1).normal(0, 0.1, (16, 1, 4, 4))).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    out = tmp_path / "q.onnx"
    quantize_model(src, out, make_config("static", "x86-avx2"),
                   open_source(tmp_path / "c.npz", graph_inputs(onnx.load(str(src)))))
    q = onnx.load(str(out))
    producer = {o: n for n in q.graph.node for o in n.output}
    matmul = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert producer[matmul.input[0]].op_type == "DequantizeLinear"
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    assert "QLinearMatMul" in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
