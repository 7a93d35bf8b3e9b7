import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgequant import qmath

DTYPES = ["int8", "uint8", "int16", "uint16"]
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=finite), dtype=st.sampled_from(DTYPES),
       symmetric=st.booleans())
@settings(max_examples=200, deadline=None)
def test_round_trip_error_within_half_scale(x, dtype, symmetric):
    qp = qmath.params_for(x, dtype, symmetric=symmetric)
    err = np.abs(qmath.dequantize(qmath.quantize(x, qp), qp).astype(np.float64) - x)
    # float32 storage of the result adds at most one ulp of the value.
    bound = float(qp.scale) / 2 * (1 + 1e-6) + np.abs(x).astype(np.float64) * 2e-7 + 1e-12
    assert np.all(err <= bound)


@given(lo=finite, hi=finite, dtype=st.sampled_from(DTYPES), symmetric=st.booleans(), reduce=st.booleans())
@settings(max_examples=200, deadline=None)
def test_zero_is_exactly_representable(lo, hi, dtype, symmetric, reduce):
    lo, hi = min(lo, hi), max(lo, hi)
    reduce = reduce and dtype in ("int8", "uint8")
    qp = qmath.compute_qparams(lo, hi, dtype, symmetric=symmetric, reduce_range=reduce)
    q0 = qmath.quantize(np.zeros(1), qp)
    assert qmath.dequantize(q0, qp)[0] == 0.0
    assert qp.qmin <= int(qp.zero_point) <= qp.qmax


def test_constant_tensor_has_no_division_by_zero():
    for value in (0.0, 3.5, -2.0):
        x = np.full(10, value, np.float32)
        qp = qmath.params_for(x, "int8")
        assert np.isfinite(qp.scale).all() and float(qp.scale) > 0
        assert np.allclose(qmath.dequantize(qmath.quantize(x, qp), qp), x, atol=float(qp.scale) / 2)


def test_out_of_range_values_clip():
    qp = qmath.compute_qparams(-1.0, 1.0, "int8")
    q = qmath.quantize(np.array([-100.0, 100.0]), qp)
    assert q.tolist() == [-128, 127]
    assert q.dtype == np.int8


def test_seed_example_values():
    # The seed article's tensor: range [-1.5, 1.0] on int8.
    x = np.array([0.1, 0.5, -0.3, 1.0, -1.5])
    qp = qmath.params_for(x, "int8")
    assert float(qp.scale) == pytest.approx(2.5 / 255, rel=1e-6)
    assert int(qp.zero_point) == round(-128 + 1.5 / (2.5 / 255))
    assert qmath.quantization_error(x, qp).max_abs <= float(qp.scale) / 2 + 1e-7


def test_reduce_range_uses_seven_bits():
    assert qmath.qrange("int8", reduce_range=True) == (-64, 63)
    assert qmath.qrange("uint8", reduce_range=True) == (0, 127)
    with pytest.raises(ValueError):
        qmath.qrange("int16", reduce_range=True)


def test_symmetric_signed_has_zero_point_zero_and_unsigned_mid():
    assert int(qmath.compute_qparams(-3, 1, "int8", symmetric=True).zero_point) == 0
    assert int(qmath.compute_qparams(-3, 1, "uint8", symmetric=True).zero_point) == 128


def test_per_channel_matches_per_tensor_on_each_channel():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 3, 3, 3)) * np.array([0.01, 1, 10, 100])[:, None, None, None]
    qp = qmath.params_for(w, "int8", symmetric=True, axis=0)
    assert qp.scale.shape == (4,)
    deq = qmath.dequantize(qmath.quantize(w, qp), qp)
    for c in range(4):
        qc = qmath.params_for(w[c], "int8", symmetric=True)
        assert float(qp.scale[c]) == pytest.approx(float(qc.scale))
        assert np.max(np.abs(deq[c] - w[c])) <= float(qc.scale) / 2 + 1e-6 * abs(w[c]).max()
    # Per-tensor wipes out the small channel; per-channel keeps it.
    per_tensor = qmath.params_for(w, "int8", symmetric=True)
    small_pt = qmath.dequantize(qmath.quantize(w, per_tensor), per_tensor)[0]
    assert qmath.sqnr_db(w[0], deq[0]) > 30
    assert qmath.sqnr_db(w[0], small_pt) < 1


def test_error_metrics_known_values():
    ref = np.array([1.0, 0.0, -1.0, 2.0])
    approx = ref + np.array([0.1, 0.0, -0.1, 0.0])
    assert qmath.max_abs_error(ref, approx) == pytest.approx(0.1)
    assert qmath.mse(ref, approx) == pytest.approx(0.02 / 4)
    assert qmath.sqnr_db(ref, approx) == pytest.approx(10 * np.log10(6.0 / 0.02))
    assert qmath.sqnr_db(ref, ref) == float("inf")
    assert qmath.cosine(ref, ref) == pytest.approx(1.0)
    assert qmath.cosine(ref, -ref) == pytest.approx(-1.0)
    assert qmath.cosine(np.zeros(3), np.zeros(3)) == 1.0


def test_matches_onnxruntime_quantize_linear():
    """Our quantize must agree bit-for-bit with ORT's QuantizeLinear (round half to even)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = np.array([-1.5, -0.3, 0.1, 0.5, 1.0, 0.00980392, 0.0049019607], np.float32)
    qp = qmath.params_for(x, "uint8")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [7])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [float(qp.scale)]),
         helper.make_tensor("z", TensorProto.UINT8, [], [int(qp.zero_point)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (q_ort,) = sess.run(None, {"x": x})
    assert np.array_equal(q_ort, qmath.quantize(x, qp))
