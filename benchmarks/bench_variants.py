"""Build the quantized variants compared in the suite: ORT's documented defaults vs edgequant.

Every builder writes ``out`` and returns a dict of facts about what it built (recipe,
config, passes, warnings). Coverage is measured afterwards for all variants alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from bench_data import ListReader
from edgequant.qdq import quantize_static_optimized
from edgequant.qdq.transformers import fuse_transformer, quantize_transformer_dynamic

Calib = list[dict[str, np.ndarray]]
Builder = Callable[[Path, Path, Calib], dict]


def _pre(src: Path, tmp: Path) -> Path:
    pre = tmp / "pre.onnx"
    try:
        quant_pre_process(str(src), str(pre))
    except Exception:  # documented fallback for models symbolic shape inference can't handle
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def ort_default_static(src: Path, out: Path, calib: Calib) -> dict:
    """The documented flow: quant_pre_process, then quantize_static(QDQ) with its defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        quantize_static(str(_pre(src, Path(tmp))), str(out), ListReader(calib), quant_format=QuantFormat.QDQ)
    return {"recipe": "quant_pre_process + quantize_static(QDQ, defaults: S8S8 per-tensor)"}


def ort_default_dynamic(src: Path, out: Path, calib: Calib) -> dict:
    quantize_dynamic(str(src), str(out))
    return {"recipe": "quantize_dynamic(defaults)"}


def _summary_facts(s) -> dict:
    return {"passes": s.passes, "warnings": s.warnings, "config": s.config,
            "float_compute_nodes": s.float_compute_nodes}


def edgequant_quantize(mode: str) -> Builder:
    """What ``edgequant quantize --mode MODE`` writes with its defaults on this machine (target
    auto, so the CPU's own rule and every pass and quick timing the product does): the suite's
    ``edgequant`` column is the product, not a fixed recipe. It gets the suite's calibration
    samples in both modes, as a user with data would pass them (dynamic: the first times the
    alternative graphs, a padded sentence for the encoder)."""
    def build(src: Path, out: Path, calib: Calib) -> dict:
        from edgequant import api

        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "calib.npz"
            np.savez(npz, **{k: np.concatenate([c[k] for c in calib]) for k in calib[0]})
            res = api.quantize(src, out, mode=mode, calib=str(npz), force=True)
        return {"recipe": f"edgequant quantize --mode {mode} --calib SUITE_SAMPLES (defaults: target "
                          f"{res.config.target})",
                "config": res.config.to_dict(), "passes": list(res.notes), "warnings": list(res.warnings)}
    return build


def edgequant_static(**kw) -> Builder:
    def build(src: Path, out: Path, calib: Calib) -> dict:
        s = quantize_static_optimized(src, out, ListReader(calib), **kw)
        return {"recipe": f"edgequant.qdq.quantize_static_optimized({_kw(kw)})", **_summary_facts(s)}
    return build


def edgequant_transformer(**kw) -> Builder:
    def build(src: Path, out: Path, calib: Calib) -> dict:
        s = quantize_transformer_dynamic(src, out, **kw)
        return {"recipe": f"edgequant.qdq.transformers.quantize_transformer_dynamic({_kw(kw)})", **_summary_facts(s)}
    return build


def edgequant_static_fused(**kw) -> Builder:
    """Part C comparison: our static recipe applied to the transformer-fused graph."""
    def build(src: Path, out: Path, calib: Calib) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            fused = Path(tmp) / "fused.onnx"
            fuse_transformer(src, fused, num_heads=kw.pop("num_heads", 0), hidden_size=kw.pop("hidden_size", 0))
            s = quantize_static_optimized(fused, out, ListReader(calib), **kw)
        return {"recipe": f"fuse_transformer + quantize_static_optimized({_kw(kw)})", **_summary_facts(s)}
    return build


def fp32_fused(**kw) -> Builder:
    """FP32 after transformer fusion only: separates the fusion gain from the INT8 gain."""
    def build(src: Path, out: Path, calib: Calib) -> dict:
        f = fuse_transformer(src, out, **kw)
        return {"recipe": "fuse_transformer (FP32)", "passes": [str(f.fused)]}
    return build


def _kw(kw: dict) -> str:
    return ", ".join(f"{k}={v.name if hasattr(v, 'name') else v}" for k, v in kw.items())


U8 = QuantType.QUInt8
CNN_VARIANTS: dict[str, Builder] = {
    "ort_default_static": ort_default_static,
    "edgequant": edgequant_quantize("static"),                              # the product on this CPU
    "edgequant_u8s8_rr": edgequant_static(reduce_range=True),               # U8S8 + 7-bit weights, any CPU
    "edgequant_u8s8_no_rr": edgequant_static(reduce_range=False),           # saturation-prone on AVX2
    "edgequant_u8u8": edgequant_static(weight_type=U8),
    # per-tensor weights: what run/tune add as static-per-tensor where depthwise convs are (issue 14)
    "edgequant_per_tensor": edgequant_static(reduce_range=True, per_channel=False),
}
ENCODER_VARIANTS: dict[str, Builder] = {
    "ort_default_static": ort_default_static,
    "ort_default_dynamic": ort_default_dynamic,
    "fp32_fused": fp32_fused(num_heads=12, hidden_size=384),
    "edgequant": edgequant_quantize("dynamic"),                            # the product on this CPU
    "edgequant_fused_rr": edgequant_transformer(num_heads=12, hidden_size=384),  # fused, per-channel, rr
    "edgequant_dynamic_matmul_only": edgequant_transformer(num_heads=12, hidden_size=384, op_types=["MatMul"]),
    "edgequant_static_fused": edgequant_static_fused(num_heads=12, hidden_size=384, reduce_range=True),
}
