"""Tuning recipes: one quantization setting to try, and the generators the search draws from.

A :class:`Recipe` is the search's unit: it knows how to become a :class:`QuantizeConfig` for a
target, how to describe itself in one line, and a JSON-safe form that is both recorded in the
report and hashed for the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx

from ..alternatives import default_alternatives, on_device_only
from ..quantize import QuantizeConfig, make_config
from ..sensitivity import COMPUTE_OPS, NodeSensitivity, SensitivityReport
from ..targets import resolve_target

#: Our key in a recipe's extra options: 16-bit activations for these tensors (TensorQuantOverrides).
INT16_KEY = "TensorQuantOverrides"
_SHORT = {"uint8": "U8", "int8": "S8", "uint16": "U16", "int16": "S16"}   # U8S8 = uint8 activations, int8 weights


@dataclass(frozen=True)
class Recipe:
    """One candidate quantization setting (``None`` = the target rule's default)."""

    name: str
    mode: str                                   # dynamic | static
    stage: str = "defaults"
    why: str = ""
    calib_method: str = "minmax"
    calib_percentile: float = 99.999
    per_channel: bool | None = None
    reduce_range: bool | None = None
    weight_type: str | None = None
    activation_type: str | None = None
    exclude: tuple[str, ...] = ()
    int16_tensors: tuple[str, ...] = ()
    uint8_weights: tuple[str, ...] = ()               # initializers quantized as uint8 (an accelerator's op rule)
    equalize: bool = False                            # algorithms/: cross-layer equalization first
    bias_correction: bool = False                     # algorithms/: empirical bias correction after
    smooth_quant: bool = False                        # algorithms/: SmoothQuant migration first
    adaround: bool = False                            # algorithms/: learned weight rounding after
    gptq: bool = False                                # algorithms/: error-compensating weight rounding after
    qat_minutes: float = 0.0                          # > 0: QAT (edgequant.qat) from this recipe's PTQ model
    fuse_transformer: bool | None = None              # dynamic: ORT's transformer fusion first (None: auto)
    float_reasons: tuple[tuple[str, str], ...] = ()   # (node, why it is kept float / 16-bit)
    kernels: str | None = None                        # build with this sibling target's rule (x86-amx -> x86-vnni)

    def _overrides(self, quant_type) -> dict:
        """Per-tensor ORT ``TensorQuantOverrides`` (``quant_type`` maps our type names to ORT's)."""
        out = {t: [{"quant_type": quant_type("uint16")}] for t in self.int16_tensors}
        out.update({w: [{"quant_type": quant_type("uint8")}] for w in self.uint8_weights})
        return out

    def config(self, target: str) -> QuantizeConfig:
        """The quantizer settings; 16-bit tensors and uint8 weights become ORT ``TensorQuantOverrides``."""
        extra: dict = {}
        if self.int16_tensors or self.uint8_weights:
            from onnxruntime.quantization import QuantType

            ort_type = {"uint16": QuantType.QUInt16, "uint8": QuantType.QUInt8}
            extra[INT16_KEY] = self._overrides(ort_type.__getitem__)
        static = self.mode == "static"
        return make_config(
            self.mode, self.kernels or target, per_channel=self.per_channel, reduce_range=self.reduce_range,
            weight_type=self.weight_type, activation_type=self.activation_type if static else None,
            calib_method=self.calib_method if static else "minmax",
            calib_percentile=self.calib_percentile, exclude=self.exclude, extra_options=extra,
            equalize=self.equalize and static, bias_correction=self.bias_correction and static,
            smooth_quant=self.smooth_quant, adaround=self.adaround and static, gptq=self.gptq,
            fuse_transformer=None if static else self.fuse_transformer)

    def to_dict(self, target: str) -> dict:
        """JSON-safe full configuration (what the report records and the cache hashes)."""
        d = self.config(target).to_dict()
        extra = dict(d.get("extra_options") or {})
        if INT16_KEY in extra:
            extra[INT16_KEY] = self._overrides(lambda name: "Q" + name.upper().replace("INT", "Int"))
        d["extra_options"] = extra
        if self.qat_minutes:
            d["qat_minutes"] = self.qat_minutes
        return d

    def summary(self, target: str) -> str:
        """One line: mode, types, calibration, what stays float or 16-bit."""
        c = self.config(target)
        if c.mode == "dynamic":
            parts = [f"dynamic {c.weight_type} weights", f"ops {','.join(c.op_types or ())}"]
            if c.fuse_transformer is not None:
                parts.append("transformer fused" if c.fuse_transformer else "transformer unfused")
        else:
            parts = [f"static {c.quant_format.upper()} {_SHORT[c.activation_type]}{_SHORT[c.weight_type]}",
                     c.calib_method + (f" {c.calib_percentile:g}" if c.calib_method == "percentile" else "")]
        parts.append("per-channel" if c.per_channel else "per-tensor")
        if c.reduce_range:
            parts.append("reduce_range")
        if self.exclude:
            parts.append(f"float: {', '.join(self.exclude)}")
        if self.int16_tensors:
            parts.append(f"16-bit: {', '.join(self.int16_tensors)}")
        if self.uint8_weights:
            parts.append(f"uint8 weights: {', '.join(self.uint8_weights)}")
        parts += [label for flag, label in ((self.smooth_quant, "SmoothQuant"), (self.equalize, "equalized"),
                                            (self.adaround, "AdaRound"), (self.gptq, "GPTQ"),
                                            (self.bias_correction, "bias-corrected"))
                  if flag]
        if self.qat_minutes:
            parts.append(f"QAT (distilled from FP32, up to {self.qat_minutes:g} min)")
        if self.kernels:
            parts.append(f"built as {self.kernels}")
        return "; ".join(parts)

    def renamed(self, name: str, **changes) -> Recipe:
        return replace(self, name=name, **changes)


def default_recipes(target: str = "auto", model: onnx.ModelProto | None = None) -> list[Recipe]:
    """The seed's first two steps, dynamic (quick check) and static (production), and the alternative
    graphs ``run`` also times (:func:`edgequant.alternatives.default_alternatives`), less those that
    would not run on the target itself (dynamic on an accelerator without a float path)."""
    return [Recipe(alt.name, alt.mode, why=alt.why, per_channel=alt.per_channel,
                   activation_type=alt.activation_type, fuse_transformer=alt.fuse_transformer, kernels=alt.kernels,
                   equalize=alt.equalize, gptq=alt.gptq)
            for alt in on_device_only(target, default_alternatives(target, model))]


def calibration_recipes(target: str, base: Recipe | None = None) -> list[Recipe]:
    """Static over budget: other calibration methods, weight types and per-channel, per target.

    ``base`` (default: the target's static default) carries what every variant must keep, e.g.
    the weight types a placement repair found for the accelerator."""
    rule = resolve_target(target)
    base = base or Recipe("static", "static")

    def variant(name: str, why: str, **changes) -> Recipe:
        return replace(base, name=name, stage="calibration", why=why, **changes)

    out = [
        variant("static-pct99.999", "clip rare activation outliers", calib_method="percentile",
                calib_percentile=99.999),
        variant("static-pct99.99", "clip more activation outliers", calib_method="percentile",
                calib_percentile=99.99),
        variant("static-entropy", "KL-optimal activation ranges", calib_method="entropy"),
    ]
    if rule.name == "x86-avx2":
        out.append(variant("static-u8u8", "U8U8 with full 8-bit weights: no VPMADDUBSW saturation, "
                           "no reduce_range loss", weight_type="uint8", reduce_range=False))
    elif rule.name in ("x86-vnni", "x86-amx", "arm64"):
        out.append(variant("static-reduce-range", "7-bit weights", reduce_range=True))
    if not rule.per_channel:
        out.append(variant("static-per-channel", "per-channel weights", per_channel=True))
    return out


def algorithm_recipes(base: Recipe, model: onnx.ModelProto) -> list[Recipe]:
    """Still fully INT8, better numbers: the post-training algorithms of ``edgequant.algorithms``
    on top of ``base``, cheapest first (each is exact in FP32 or a calibration choice)."""
    ops = {n.op_type for n in model.graph.node}

    def variant(name: str, why: str, **changes) -> Recipe:
        return replace(base, name=name, stage="algorithms", why=why, **changes)

    out = [variant("static-mse", "activation ranges minimizing the quantization MSE of their readers",
                   calib_method="mse")]
    if "Conv" in ops:
        out += [variant("static-equalize", "cross-layer equalization of Conv pairs (exact in FP32)", equalize=True),
                variant("static-equalize-bc", "equalization, then empirical bias correction",
                        equalize=True, bias_correction=True),
                variant("static-equalize-mse", "equalization, then MSE ranges", equalize=True, calib_method="mse")]
    if ops & {"MatMul", "Gemm"} and ops & {"LayerNormalization", "ReduceMean"}:
        out.append(variant("static-smoothquant", "outlier input channels of MatMul/Gemm migrated into the weights",
                           smooth_quant=True))
    return out


def dynamic_algorithm_recipes(base: Recipe, model: onnx.ModelProto) -> list[Recipe]:
    """Dynamic INT8 with better numbers and no layer leaving INT8: SmoothQuant with an added Mul
    where the producer cannot absorb the division (post-LN residuals, GELU outputs), then also
    GPTQ rounding of the weights it made harder (the same kernels: the timing barely moves)."""
    ops = {n.op_type for n in model.graph.node}
    if base.mode != "dynamic" or base.smooth_quant or not ops & {"MatMul", "Gemm"}:
        return []
    smoothed = replace(base, name=f"{base.name}+smoothquant", stage="algorithms", smooth_quant=True,
                       why="outlier input channels of MatMul/Gemm migrated into the weights, strength per activation")
    return [smoothed, replace(smoothed, name=f"{smoothed.name}+gptq", gptq=True,
                              why="SmoothQuant, then weight rounding that cancels each layer's output error (GPTQ)")]


def rounding_recipes(base: Recipe) -> list[Recipe]:
    """Weight rounding on ``base``: GPTQ (one pass per layer), learned rounding (AdaRound), then
    AdaRound with bias correction too: slower to quantize (each optimizes every layer's rounding),
    so tried only when the cheaper algorithms were not enough."""
    if base.mode != "static":
        return []

    def variant(suffix: str, why: str, **changes) -> Recipe:
        return replace(base, name=f"{base.name}+{suffix}", stage="learned rounding", why=why,
                       **{"adaround": True, "gptq": False, **changes})

    out = [] if base.gptq else [   # a base already GPTQ-rounded (qnn's A16W8) tries AdaRound instead
        variant("gptq", "each weight row's rounding error absorbed by the rows not yet rounded (GPTQ)",
                adaround=False, gptq=True)]
    out.append(variant("adaround", "weights rounded up or down to reconstruct each layer's FP32 output"))
    if not base.bias_correction:
        out.append(variant("adaround-bc", "learned rounding, then empirical bias correction", bias_correction=True))
    return out


def qat_recipe(base: Recipe, minutes: float) -> list[Recipe]:
    """Quantization-aware training from ``base``'s PTQ model (:mod:`edgequant.qat`): the last fully
    INT8 step. QAT relearns the weights from FP32, so the recipe keeps ``base``'s calibration, types
    and 16-bit/uint8 tensors but none of the weight algorithms (equalization and SmoothQuant change the
    FP32 weights QAT starts from; AdaRound and bias correction are what training replaces)."""
    if base.mode != "static" or minutes <= 0:
        return []
    return [replace(base, name="static-qat", stage="qat", why="quantization-aware training, distilled from FP32 "
                    "outputs on the calibration samples", equalize=False, smooth_quant=False, adaround=False,
                    gptq=False, bias_correction=False, qat_minutes=minutes)]


def placement_recipes(base: Recipe, operators_on_cpu: Sequence[str], model: onnx.ModelProto) -> list[Recipe]:
    """``base`` changed so the accelerator takes back the operators it left to the CPU.

    Two repairs that stay fully quantized: uint8 instead of symmetric int8 weights for the
    operators' initializers (op validation often wants an unsigned scale or weight), and 16-bit
    activations for their input and output tensors; then both together."""
    wanted = set(operators_on_cpu)
    nodes = [n for n in model.graph.node if n.name in wanted]
    if not nodes:
        return []
    inits = {i.name for i in model.graph.initializer}
    weights = tuple(dict.fromkeys(t for n in nodes for t in n.input[1:] if t in inits))
    tensors = tuple(dict.fromkeys(t for n in nodes for t in [*n.input, *n.output] if t and t not in inits))
    reasons = tuple((n.name, f"{n.op_type} runs on the CPU, not the accelerator, with {base.name}'s types")
                    for n in nodes)

    def repaired(suffix: str, why: str, **changes) -> Recipe:
        return replace(base, name=f"{base.name}+{suffix}", stage="placement", why=why,
                       float_reasons=base.float_reasons + reasons, **changes)

    out = []
    if weights:
        out.append(repaired("u8w", "uint8 weights where the accelerator rejects symmetric int8",
                            uint8_weights=tuple(dict.fromkeys(base.uint8_weights + weights))))
    if tensors:
        out.append(repaired("a16io", "16-bit activations around the operators the accelerator rejected",
                            int16_tensors=tuple(dict.fromkeys(base.int16_tensors + tensors))))
    if weights and tensors:
        out.append(repaired("u8w-a16io", "both repairs",
                            uint8_weights=tuple(dict.fromkeys(base.uint8_weights + weights)),
                            int16_tensors=tuple(dict.fromkeys(base.int16_tensors + tensors))))
    return out


def range_recipes(sens: SensitivityReport | None, base: Recipe | None = None) -> list[Recipe]:
    """Tensors with outlier-dominated ranges: 16-bit activations for them, or their producers in float."""
    if sens is None or not sens.flagged:
        return []
    base = base or Recipe("static", "static")
    flagged = [t.name for t in sens.flagged]
    reasons = tuple((t.name, t.flag or "") for t in sens.flagged)
    producers = [n for n in sens.nodes if set(n.outputs) & set(flagged)]
    out = [replace(base, name="static-int16-ranges", stage="ranges",
                   why="16-bit activations where 8-bit cannot span the range",
                   int16_tensors=tuple(dict.fromkeys(base.int16_tensors + tuple(flagged))),
                   float_reasons=base.float_reasons + reasons)]
    if producers:
        exclude = tuple(dict.fromkeys(x for n in producers for x in n.region))
        out.append(replace(base, name="static-float-ranges", stage="ranges",
                           why="keep the producers of huge-range tensors float", exclude=base.exclude + exclude,
                           float_reasons=base.float_reasons + tuple((n.name, n.explain()) for n in producers)))
    return out


def fallback_order(sens: SensitivityReport) -> list[NodeSensitivity]:
    """Nodes to fall back first: those that introduce error (by drop), then the rest by low SQNR."""
    introducing = [n for n in sens.nodes if n.drop_db >= 1.0]
    rest = sorted((n for n in sens.nodes if n.drop_db < 1.0), key=lambda n: n.output_sqnr_db)
    return [*introducing, *rest]


def fallback_recipe(base: Recipe, nodes: Sequence[NodeSensitivity], *, sixteen_bit: bool,
                    allow_float: bool = True) -> Recipe:
    """``base`` with ``nodes`` taken out of INT8: float regions, or 16-bit outputs (QNN; every
    node when float is not allowed, whatever the cause of its error)."""
    exclude: list[str] = list(base.exclude)
    int16: list[str] = list(base.int16_tensors)
    reasons: dict[str, str] = {}
    for n in nodes:
        reasons[n.name] = n.explain()
        if sixteen_bit and (n.cause == "activations" or not allow_float):
            int16.extend(n.outputs)
            continue
        exclude.extend(n.region)
        for other in n.region[1:]:
            reasons.setdefault(other, f"neighbour of {n.name}, kept float with it: onnxruntime re-quantizes "
                                      "a float Conv/Gemm between quantized neighbours when it loads the model")
    kind = "int16" if sixteen_bit else "float"
    return base.renamed(
        f"{base.name}+{kind}{len(nodes)}", stage="fallback",
        why=f"fall back the {len(nodes)} most sensitive node(s)",
        exclude=tuple(dict.fromkeys(exclude)), int16_tensors=tuple(dict.fromkeys(int16)),
        float_reasons=tuple(reasons.items()))


def dynamic_fallback_recipe(base: Recipe, ranked: Sequence[tuple[str, float]]) -> Recipe:
    """``base`` (dynamic) with the ``ranked`` MatMul/Gemm nodes (name, input SQNR under dynamic
    quantization, :mod:`edgequant.sensitivity_dynamic`) left float. Dynamic quantization puts no
    Q/DQ between layers, so each node leaves INT8 alone: no neighbour region as in :func:`fallback_recipe`."""
    return base.renamed(
        f"{base.name}+float{len(ranked)}", stage="fallback",
        why=f"the {len(ranked)} MatMul/Gemm node(s) whose inputs dynamic INT8 quantizes worst kept float",
        exclude=tuple(dict.fromkeys([*base.exclude, *(name for name, _db in ranked)])),
        float_reasons=tuple((name, f"its input keeps {db:.1f} dB SQNR under per-call uint8 quantization")
                            for name, db in ranked))


def keeps_int8(recipe: Recipe, sens: SensitivityReport) -> bool:
    """Whether some compute node is still quantized (a candidate with none cannot be faster)."""
    compute = {n.name for n in sens.nodes if n.op_type in COMPUTE_OPS}
    return not compute or bool(compute - set(recipe.exclude))
