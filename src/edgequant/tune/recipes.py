"""Tuning recipes: one quantization setting to try, and the generators the search draws from.

A :class:`Recipe` is the search's unit: it knows how to become a :class:`QuantizeConfig` for a
target, how to describe itself in one line, and a JSON-safe form that is both recorded in the
report and hashed for the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    exclude: tuple[str, ...] = ()
    int16_tensors: tuple[str, ...] = ()
    float_reasons: tuple[tuple[str, str], ...] = ()   # (node, why it is kept float / 16-bit)

    def config(self, target: str) -> QuantizeConfig:
        """The quantizer settings; 16-bit tensors become ORT ``TensorQuantOverrides``."""
        extra: dict = {}
        if self.int16_tensors:
            from onnxruntime.quantization import QuantType

            extra[INT16_KEY] = {t: [{"quant_type": QuantType.QUInt16}] for t in self.int16_tensors}
        static = self.mode == "static"
        return make_config(
            self.mode, target, per_channel=self.per_channel, reduce_range=self.reduce_range,
            weight_type=self.weight_type, calib_method=self.calib_method if static else "minmax",
            calib_percentile=self.calib_percentile, exclude=self.exclude, extra_options=extra)

    def to_dict(self, target: str) -> dict:
        """JSON-safe full configuration (what the report records and the cache hashes)."""
        d = self.config(target).to_dict()
        extra = dict(d.get("extra_options") or {})
        if INT16_KEY in extra:
            extra[INT16_KEY] = {t: [{"quant_type": "QUInt16"}] for t in self.int16_tensors}
        d["extra_options"] = extra
        return d

    def summary(self, target: str) -> str:
        """One line: mode, types, calibration, what stays float or 16-bit."""
        c = self.config(target)
        if c.mode == "dynamic":
            parts = [f"dynamic {c.weight_type} weights", f"ops {','.join(c.op_types or ())}"]
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
        return "; ".join(parts)

    def renamed(self, name: str, **changes) -> Recipe:
        return replace(self, name=name, **changes)


def default_recipes() -> list[Recipe]:
    """The seed's first two steps: dynamic (quick check) and static (production), target defaults."""
    return [Recipe("dynamic", "dynamic", why="seed: quick check"),
            Recipe("static", "static", why="seed: production")]


def calibration_recipes(target: str) -> list[Recipe]:
    """Static over budget: other calibration methods, weight types and per-channel, per target."""
    rule = resolve_target(target)
    out = [
        Recipe("static-pct99.999", "static", "calibration", "clip rare activation outliers",
               calib_method="percentile", calib_percentile=99.999),
        Recipe("static-pct99.99", "static", "calibration", "clip more activation outliers",
               calib_method="percentile", calib_percentile=99.99),
        Recipe("static-entropy", "static", "calibration", "KL-optimal activation ranges", calib_method="entropy"),
    ]
    if rule.name == "x86-avx2":
        out.append(Recipe("static-u8u8", "static", "calibration",
                          "U8U8 with full 8-bit weights: no VPMADDUBSW saturation, no reduce_range loss",
                          weight_type="uint8", reduce_range=False))
    elif rule.name in ("x86-vnni", "arm64"):
        out.append(Recipe("static-reduce-range", "static", "calibration", "7-bit weights",
                          reduce_range=True))
    if not rule.per_channel:
        out.append(Recipe("static-per-channel", "static", "calibration", "per-channel weights",
                          per_channel=True))
    return out


def range_recipes(sens: SensitivityReport | None) -> list[Recipe]:
    """Tensors with outlier-dominated ranges: 16-bit activations for them, or their producers in float."""
    if sens is None or not sens.flagged:
        return []
    flagged = [t.name for t in sens.flagged]
    reasons = tuple((t.name, t.flag or "") for t in sens.flagged)
    producers = [n for n in sens.nodes if set(n.outputs) & set(flagged)]
    out = [Recipe("static-int16-ranges", "static", "ranges", "16-bit activations where 8-bit cannot span the range",
                  int16_tensors=tuple(flagged), float_reasons=reasons)]
    if producers:
        exclude = tuple(dict.fromkeys(x for n in producers for x in n.region))
        out.append(Recipe("static-float-ranges", "static", "ranges", "keep the producers of huge-range tensors float",
                          exclude=exclude, float_reasons=tuple((n.name, n.explain()) for n in producers)))
    return out


def fallback_order(sens: SensitivityReport) -> list[NodeSensitivity]:
    """Nodes to fall back first: those that introduce error (by drop), then the rest by low SQNR."""
    introducing = [n for n in sens.nodes if n.drop_db >= 1.0]
    rest = sorted((n for n in sens.nodes if n.drop_db < 1.0), key=lambda n: n.output_sqnr_db)
    return [*introducing, *rest]


def fallback_recipe(base: Recipe, nodes: Sequence[NodeSensitivity], *, sixteen_bit: bool) -> Recipe:
    """``base`` with ``nodes`` taken out of INT8: float regions, or 16-bit outputs (QNN)."""
    exclude: list[str] = list(base.exclude)
    int16: list[str] = list(base.int16_tensors)
    reasons: dict[str, str] = {}
    for n in nodes:
        reasons[n.name] = n.explain()
        if sixteen_bit and n.cause == "activations":
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


def keeps_int8(recipe: Recipe, sens: SensitivityReport) -> bool:
    """Whether some compute node is still quantized (a candidate with none cannot be faster)."""
    compute = {n.name for n in sens.nodes if n.op_type in COMPUTE_OPS}
    return not compute or bool(compute - set(recipe.exclude))
