"""The default candidates: one table that ``run`` (:mod:`edgequant.pipeline`) and ``tune``
(:mod:`edgequant.tune.recipes`) both draw from, so the two never disagree about which alternative
graphs a model gets. Each alternative is there because it was faster on some machine and slower on
another; none is chosen here: the interleaved timing on the target and the budget decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .quantize import QuantizeConfig, looks_like_transformer, make_config
from .quantize_config import per_tensor_dynamic_pays, per_tensor_pays
from .qdq.amx_weights import has_wide_conv
from .targets import resolve_target


@dataclass(frozen=True)
class Alternative:
    """One default candidate (``None`` = the target rule's default)."""

    name: str
    mode: str                                 # dynamic | static
    why: str
    per_channel: bool | None = None
    activation_type: str | None = None
    fuse_transformer: bool | None = None      # dynamic: onnxruntime's transformer fusion first
    kernels: str | None = None                # build with this sibling target's rule (x86-amx -> x86-vnni)
    equalize: bool = False                    # static: cross-layer equalization first (exact in FP32)
    gptq: bool = False                        # error-compensating weight rounding after (algorithms.gptq)

    def config(self, target: str) -> QuantizeConfig:
        return make_config(self.mode, self.kernels or target, per_channel=self.per_channel,
                           activation_type=self.activation_type, fuse_transformer=self.fuse_transformer,
                           equalize=self.equalize, gptq=self.gptq)


def default_alternatives(target: str, model: onnx.ModelProto | None = None) -> list[Alternative]:
    """The seed's pipeline, dynamic (quick check) then static (production), plus the alternative
    graphs this model and target may run faster as:

    * a transformer: dynamic fused by onnxruntime's optimizer and not (which is faster depends on
      the CPU and the runtime);
    * compute all weight MatMul/Gemm: dynamic with per-tensor weights, onnxruntime's own default
      (faster on small GEMMs, :func:`~edgequant.quantize_config.per_tensor_dynamic_pays`);
    * depthwise convolutions: static with per-tensor weights (MLAS's INT8 depthwise kernel skips
      the per-channel rescale, :func:`~edgequant.quantize_config.per_tensor_pays`), cross-layer
      equalized first so that one scale per tensor fits every channel (exact in FP32; on the DMS face
      detector per-tensor alone collapses the task metric, 0.99 -> 0.50, equalized it keeps 0.98);
    * x86-amx with a wide conv: static built with x86-vnni's rule, no conv steered to the AMX GEMM
      (the steering's channel threshold was measured on other layers);
    * an accelerator without a float path (qnn): 16-bit activations (A16W8), which HTP runs natively
      and which keeps range-sensitive heads (a detector's raw logits) within budget; with 16-bit
      activations the 8-bit weights' rounding is most of the error left, so GPTQ rounds them
      (the integers only: same grid, same graph; HF BERT on HTP: nearest-neighbour agreement
      0.966 -> 0.972, SQNR 25.3 -> 28.6 dB on the simulator; benchmarks/FINDINGS.md).

    Dynamic stays in the list on qnn: there its integer ops run on the CPU, which ``run`` reports
    as the seed's quick check and ``tune`` leaves out (:func:`on_device_only`)."""
    static = Alternative("static", "static", "seed: production")
    if model is not None and looks_like_transformer(model):
        out = [Alternative("dynamic", "dynamic", "seed: quick check (transformer fused)", fuse_transformer=True),
               Alternative("dynamic-unfused", "dynamic", "transformer left unfused", fuse_transformer=False),
               static]
    else:
        out = [Alternative("dynamic", "dynamic", "seed: quick check"), static]
        if model is not None and per_tensor_dynamic_pays(target, model):
            out.insert(1, Alternative("dynamic-per-tensor", "dynamic", "per-tensor weights (onnxruntime's "
                                      "default): faster on small GEMMs", per_channel=False))
    if model is not None and per_tensor_pays(target, model):
        out.append(Alternative("static-per-tensor", "static", "per-tensor weights, cross-layer equalized: the INT8 "
                               "depthwise kernel skips the per-channel rescale", per_channel=False, equalize=True))
    rule = resolve_target(target)
    if model is not None and rule.name == "x86-amx" and has_wide_conv(model):
        out.append(Alternative("static-vnni-convs", "static", "every conv on MLAS's VNNI kernels, none steered "
                               "to the AMX GEMM: the steering's channel threshold was measured on other layers",
                               kernels="x86-vnni"))
    if not rule.float_fallback:
        out.append(Alternative("static-a16w8", "static", "16-bit activations, native on the accelerator; "
                               "8-bit weights GPTQ-rounded", activation_type="uint16", gptq=True))
    return out


def on_device_only(target: str, alternatives: list[Alternative]) -> list[Alternative]:
    """Those that run on the target itself: on an accelerator without a float path, dynamic
    quantization's integer ops are CPU kernels, so it is not a candidate for the accelerator."""
    if resolve_target(target).float_fallback:
        return list(alternatives)
    return [a for a in alternatives if a.mode != "dynamic"]
