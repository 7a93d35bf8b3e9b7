"""What a quantization run is: the names it accepts and :class:`QuantizeConfig`, the record of
everything that decides the quantized model (written verbatim into reports). Shared by the
recipes (:mod:`edgequant.quantize`) and their algorithm steps (:mod:`edgequant.quantize_steps`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("dynamic", "static")
FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIB_METHODS = ("minmax", "entropy", "percentile", "distribution", "mse")
# computed here from streaming histograms (algorithms/histogram), never by ORT's HistogramCalibrater
HISTOGRAM_METHODS = ("entropy", "percentile", "distribution")
# Dynamic quantization of Conv (ConvInteger) has no fast x86/ARM kernel in ORT: 4-10x slower than FP32.
# LSTM -> DynamicQuantizeLSTM: silero_vad's two LSTMs, same accuracy, 0.95x the FP32 latency (FINDINGS.md).
DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm", "LSTM")
SLOW_DYNAMIC_OPS = {"Conv": "ConvInteger has no fast kernel in onnxruntime's CPU provider; "
                            "dynamic Conv typically runs 4-10x slower than FP32"}


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything that decides the quantized model; recorded verbatim in reports."""

    mode: str
    target: str
    quant_format: str
    per_channel: bool
    reduce_range: bool
    activation_type: str
    weight_type: str
    calib_method: str = "minmax"
    calib_percentile: float = 99.999
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    calib_limit: int | None = None
    fuse_transformer: bool | None = None      # dynamic: fuse attention blocks first (None: when it looks like one)
    robust_ranges: bool = True                # static minmax: outlying calibration samples do not set ranges
    bias_correction: bool = False             # static QDQ: fold each layer's mean output error into its bias
    equalize: bool = False                    # static: cross-layer equalization of Conv -> Conv pairs first
    equalize_relu6: bool = False              # ... also through Clip(0, 6), replaced by Relu (not exact)
    smooth_quant: bool = False                # migrate MatMul/Gemm input outlier channels into weights (dynamic: may add a Mul)
    adaround: bool = False                    # static QDQ: learned weight rounding (before bias correction)
    gptq: bool = False                        # dynamic or static QDQ: error-compensating weight rounding (GPTQ)
    extra_options: dict = field(default_factory=dict)   # passed to onnxruntime's quantizer, and only there

    @property
    def activations_to_uint8(self) -> bool:
        """x86 targets: rewrite int8 activation Q/DQ to uint8 so ORT's x86 QDQ fusions fire."""
        return self.target.startswith("x86")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types) if self.op_types is not None else None
        d["exclude"] = list(self.exclude)
        return d


def per_tensor_dynamic_pays(target: str, model) -> bool:
    """Whether dynamic INT8 with per-tensor weights (onnxruntime's own ``quantize_dynamic`` default)
    is worth a candidate next to the target's per-channel default: on a CPU target, for a model whose
    compute is all weight MatMul/Gemm (callers leave transformers out: there per-tensor costs the
    MiniLM's cosine 0.992 -> 0.953 for 0.99x the speed). Measured on the openWakeWord 'hey jarvis'
    classifier (3 Gemm; AMD EPYC AVX2, 1 thread, 3000 interleaved rounds, four runs): per-tensor 1.14-1.37x
    FP32 against 1.12-1.30x per-channel, ahead in every run; onnxruntime's default 1.10-1.22x. The
    budget and the timing decide, never this."""
    from .model import dense_compute_only
    from .targets import resolve_target

    rule = resolve_target(target)
    return rule.per_channel and rule.float_fallback and dense_compute_only(model)


def per_tensor_pays(target: str, model) -> bool:
    """Whether static INT8 with per-tensor weights is worth a candidate next to the target's
    per-channel default: on a CPU target, for a model with depthwise convolutions, where MLAS's INT8
    depthwise kernel skips the per-channel rescale (x86-vnni, 1 thread: mobilenet_v2 2.13x -> 2.21x
    FP32, the face detector 1.54x -> 1.59x; resnet18 unchanged). Per-tensor weights can cost
    accuracy (the face detector's cosine 0.994 -> 0.989), so the budget decides, never this."""
    from .model import has_depthwise_conv
    from .targets import resolve_target

    rule = resolve_target(target)
    return rule.per_channel and rule.float_fallback and has_depthwise_conv(model)
