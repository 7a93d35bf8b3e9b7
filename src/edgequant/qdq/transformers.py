"""Transformer encoders: fuse with ``onnxruntime.transformers`` first, then quantize.

Why fuse first: the fused graph has one ``Attention`` per layer (plus SkipLayerNormalization,
BiasGelu, EmbedLayerNormalization), and dynamic quantization turns those into
``QAttention`` / ``DynamicQuantizeMatMul`` / ``QEmbedLayerNormalization`` -- every compute op
integer with few Q/DQ boundaries. Static QDQ on the fused graph can't reach the fused contrib
ops (Attention stays float; weight-only ``DQ -> MatMul`` becomes MatMulNBits), so on CPUs
dynamic is the recipe for encoders (see ``benchmarks/FINDINGS.md``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType

from edgequant.devices import local_cpu
from edgequant.qdq.embedding_tables import per_column_tables
from edgequant.qdq.graph import op_counts
from edgequant.qdq.quick_choice import QuickChoice
from edgequant.qdq.summary import QuantizationSummary

#: Ops we quantize dynamically in a fused encoder (Gather/EmbedLayerNormalization: embeddings).
TRANSFORMER_DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather")


@dataclass
class FusionSummary:
    """Which fused operators the transformer optimizer created."""

    model_type: str
    fused: dict[str, int] = field(default_factory=dict)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    heads_from_graph: str | None = None     # how num_heads/hidden_size were read, when not given

    @property
    def attention_fused(self) -> bool:
        return self.fused.get("Attention", 0) + self.fused.get("MultiHeadAttention", 0) > 0


def fuse_transformer(model_in: str | Path, model_out: str | Path, *, model_type: str = "bert",
                     num_heads: int = 0, hidden_size: int = 0) -> FusionSummary:
    """Fuse attention/LayerNorm/GELU with ORT's transformer optimizer (python fusions only).

    ``num_heads``/``hidden_size`` of 0: read from the graph (:func:`encoder_graph.attention_shape`),
    which also covers exports whose head-split Reshape says -1 heads, where the optimizer's own
    detection fails. ``opt_level=0``: we don't run ORT's session optimizer here (that path imports torch).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    from .encoder_graph import attention_shape

    header = onnx.load(os.fspath(model_in), load_external_data=False)
    before = op_counts(header)
    heads_note = None
    if num_heads == 0 and hidden_size == 0:
        found = attention_shape(header)
        if found is not None:
            num_heads, hidden_size, heads_note = found.num_heads, found.hidden_size, found.describe()
    del header
    opt = optimize_model(os.fspath(model_in), model_type=model_type, num_heads=num_heads,
                         hidden_size=hidden_size, opt_level=0)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    Path(model_out).parent.mkdir(parents=True, exist_ok=True)
    opt.save_model_to_file(os.fspath(model_out))
    return FusionSummary(model_type, stats, before, op_counts(opt.model), heads_note)


#: LayerNormalization, which the fusions emit in the ai.onnx domain, exists from opset 17.
FUSION_OPSET = 17


def _fused_or_none(model_in: Path, work: Path, summary: QuantizationSummary, **fusion_args) -> Path | None:
    """The fused model, at an opset where every op it contains exists; None (and a warning) when
    fusing would need an opset the model cannot be upgraded to. Never an invalid model."""
    from edgequant import model as model_io
    from edgequant.errors import EdgequantError

    src = model_in
    model = onnx.load(os.fspath(model_in))
    opset = model_io.default_opset(model)
    if opset < FUSION_OPSET:
        try:
            model = model_io.upgrade_opset(model, FUSION_OPSET, path=model_in)
        except EdgequantError as exc:
            summary.warnings.append(f"transformer fusion skipped: the fused LayerNormalization needs opset "
                                    f"{FUSION_OPSET} and opset {opset} could not be upgraded ({exc})")
            return None
        src = work / "upgraded.onnx"
        onnx.save(model, os.fspath(src))
        summary.passes.append(f"upgrade_opset({opset}->{FUSION_OPSET}) for fusion")
    out = work / "fused.onnx"
    fusion = fuse_transformer(src, out, **fusion_args)
    try:
        onnx.checker.check_model(os.fspath(out), full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker failure means: do not hand ORT this graph
        summary.warnings.append(f"transformer fusion skipped: the fused graph is not valid ONNX ({str(exc)[:160]})")
        return None
    if fusion.heads_from_graph:
        summary.passes.append(fusion.heads_from_graph)
    summary.passes.append("fuse_transformer(" + ", ".join(f"{k}={v}" for k, v in fusion.fused.items()) + ")")
    if not fusion.attention_fused:
        summary.warnings.append("attention was not fused; MatMuls still quantize but QAttention won't be used")
    return out


def quantize_transformer_dynamic(model_in: str | Path, model_out: str | Path, *, fuse: bool = True,
                                 model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0,
                                 per_channel: bool = True, reduce_range: bool = True,
                                 weight_type: QuantType = QuantType.QInt8,
                                 op_types: list[str] | None = None,
                                 nodes_to_exclude: list[str] | None = None,
                                 refine: Callable[[Path, Path], str] | None = None,
                                 float_out: Path | None = None) -> QuantizationSummary:
    """Fuse (optional) then dynamically quantize an encoder; report the INT8 coverage.
    ``refine(float_model, quantized)`` rewrites the quantized weights in place (weight rounding) given
    the FP32 graph the quantizer saw (fused or not), and says what it did; ``float_out`` receives a
    copy of that FP32 graph, for a rounding applied later.

    Defaults follow the x86-without-VNNI rule: per-channel int8 weights with reduce_range
    (7-bit) so VPMADDUBSW can't saturate.
    """
    from onnxruntime.quantization import quantize_dynamic

    model_in, model_out = Path(model_in), Path(model_out)
    ops = list(op_types or TRANSFORMER_DYNAMIC_OPS)
    summary = QuantizationSummary(
        model_in=str(model_in), model_out=str(model_out),
        config={"mode": "dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
                "weight_type": weight_type.name, "op_types": ops, "fuse": fuse, "model_type": model_type},
        size_in_bytes=model_in.stat().st_size,
        ops_before=op_counts(onnx.load(str(model_in), load_external_data=False)))
    with tempfile.TemporaryDirectory(prefix="edgequant-tf-") as tmp:
        src = model_in
        if fuse:
            src = _fused_or_none(model_in, Path(tmp), summary, model_type=model_type, num_heads=num_heads,
                                 hidden_size=hidden_size) or model_in
        staged = Path(tmp) / "quantized.onnx"
        quantize_dynamic(str(src), str(staged), op_types_to_quantize=ops, per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=weight_type,
                         nodes_to_exclude=nodes_to_exclude or [],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        summary.passes.append("quantize_dynamic")
        if float_out is not None:
            shutil.copyfile(src, float_out)
        quantized = onnx.load(str(staged))
        tables = per_column_tables(quantized, onnx.load(str(src)))
        if tables:   # onnxruntime writes one scale per embedding table; outlier columns need their own
            onnx.save(quantized, str(staged))
            summary.passes.append(f"per_column_tables({len(tables)})")
        if refine is not None:
            summary.passes.append(refine(src, staged))
            quantized = onnx.load(str(staged))
        summary.ops_after = op_counts(quantized)
        model_out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = model_out.with_name(model_out.name + ".tmp")
        tmp_out.write_bytes(staged.read_bytes())
        os.replace(tmp_out, model_out)
    summary.size_out_bytes = model_out.stat().st_size
    cov = local_cpu().coverage(model_out)
    summary.quantized_compute_ops, summary.compute_ops = cov.quantized_compute_ops, cov.compute_ops
    summary.optimized_ops = cov.op_counts
    summary.float_compute_nodes = {n: "not quantized by dynamic quantization" for n in cov.float_compute_nodes}
    if not summary.fully_quantized:
        summary.warnings.append(f"{cov.compute_ops - cov.quantized_compute_ops} of {cov.compute_ops} "
                                "compute ops stay float after ORT optimization")
    return summary


def _refine_kept(chosen: str, base: str, paths: dict[str, Path], float_srcs: dict[str, Path],
                 refine: Callable[[Path, Path], str], work: Path) -> str:
    """Round the weights of ``chosen`` in place; what the rounding said.

    The rounding reads the FP32 graph ``base`` (the fused or unfused alternative ``chosen`` was
    rewritten from) was quantized from; those rewrites copy its weight initializers unchanged, so
    the base is rounded and the integers it changed are written into ``chosen`` by name."""
    rounded = work / "rounded.onnx"
    shutil.copyfile(paths[base], rounded)
    said = refine(float_srcs[base], rounded)
    if chosen != base:
        before = {t.name: t for t in onnx.load(str(paths[base])).graph.initializer}
        after = onnx.load(str(rounded))
        new = {t.name: t for t in after.graph.initializer if t != before.get(t.name)}
        rounded_model = onnx.load(str(paths[chosen]))
        for t in rounded_model.graph.initializer:
            if t.name in new:
                t.CopyFrom(new[t.name])
        onnx.save(rounded_model, str(rounded))
    os.replace(rounded, paths[chosen])
    return said


@dataclass
class EncoderChoice:
    """What :func:`quantize_encoder_dynamic` built, timed and kept."""

    summary: QuantizationSummary          # the kept alternative's
    choice: QuickChoice
    built: dict[str, list[str]] = field(default_factory=dict)   # alternative -> its passes


def _half_padded(feeds: dict) -> dict | None:
    """``feeds`` with the second half of every attention mask zeroed (padding), or None without a mask."""
    masks = [k for k, v in feeds.items() if "mask" in k.lower() and np.ndim(v) >= 2 and np.shape(v)[-1] >= 2]
    if not masks:
        return None
    out = dict(feeds)
    for k in masks:
        out[k] = np.array(feeds[k], copy=True)
        out[k][..., out[k].shape[-1] // 2:] = 0
    return out


def _alternative_names(fuse: bool | None) -> list[tuple[str, bool]]:
    return [(name, f) for name, f in (("fused", True), ("unfused", False)) if fuse is None or fuse == f]


def quantize_encoder_dynamic(model_in: str | Path, model_out: str | Path, *, fuse: bool | None = None,
                             device=None, feeds=None, budget_s: float = 3.0, **kwargs) -> EncoderChoice:
    """Dynamic INT8 of an encoder, each way it can be written, keeping the fastest on ``device``.

    Alternatives: fused by ORT's transformer optimizer and not (``fuse`` None: both; True/False:
    that one), each as quantized and with :func:`encoder_graph.unfuse_skip_layernorm` applied
    (when it changes anything), and each of those with float Softmax inputs floored
    (:func:`edgequant.rewrites.floor_softmax_inputs`). They are timed interleaved
    (:func:`quick_choice.choose_fastest` on ``feeds``; without them, random inputs whose masks
    attend everywhere and the same half padded, keeping the graph least behind the fastest in
    either (:func:`quick_choice.choose_robust`); ``device`` defaults to this CPU at 1 thread) and the fastest is written to
    ``model_out``, so a partial fusion slower than none, or a runtime fusion slower than the ops
    it replaces, is never kept. ``kwargs`` go to :func:`quantize_transformer_dynamic`; its ``refine``
    (weight rounding, which changes integers only, never the graph or its speed) runs once, on the
    kept alternative, after the timing (:func:`_refine_kept`)."""
    from edgequant.data import open_source
    from edgequant.measure.session import SessionConfig
    from edgequant.model import graph_inputs
    from edgequant.rewrites import floor_softmax_inputs

    from .encoder_graph import unfuse_skip_layernorm
    from .quick_choice import choose_fastest, choose_robust

    model_in, model_out = Path(model_in), Path(model_out)
    device = device or local_cpu(SessionConfig(intra_op_threads=1))
    refine = kwargs.pop("refine", None)
    with tempfile.TemporaryDirectory(prefix="edgequant-enc-") as tmp:
        paths: dict[str, Path] = {}
        summaries: dict[str, QuantizationSummary] = {}
        float_srcs: dict[str, Path] = {}
        bases: dict[str, str] = {}          # alternative -> the fused/unfused one it was rewritten from

        def also_with(name: str, suffix: str, rewrite, label: str) -> None:
            """Add ``name`` rewritten by ``rewrite`` (in place, returns a count) as another alternative."""
            model = onnx.load(str(paths[name]))
            changed = rewrite(model)
            if changed:
                alt = f"{name}+{suffix}"
                paths[alt] = Path(tmp) / f"{len(paths)}.onnx"
                bases[alt] = bases[name]
                onnx.save(model, str(paths[alt]))
                summaries[alt] = QuantizationSummary(**{**summaries[name].__dict__, "passes": [
                    *summaries[name].passes, label.format(changed)]})

        for name, f in _alternative_names(fuse):
            paths[name] = Path(tmp) / f"{name}.onnx"
            float_srcs[name] = Path(tmp) / f"{name}.float.onnx"
            bases[name] = name
            summaries[name] = quantize_transformer_dynamic(model_in, paths[name], fuse=f, **kwargs,
                                                           float_out=float_srcs[name] if refine else None)
            also_with(name, "Add/LayerNorm", unfuse_skip_layernorm, "unfuse_skip_layernorm({}): residual Add as "
                      "Sum so onnxruntime does not fuse SkipLayerNormalization")
        # float Softmax inputs floored (exact): much faster where an attention mask pads, a little
        # slower where nothing is masked, so the timing on the caller's feeds decides
        for name in list(paths):
            also_with(name, "floored Softmax", floor_softmax_inputs, "floor_softmax_inputs({}): Softmax inputs "
                      "at least row max - 64, off onnxruntime's slow exponential path for masked scores")
        on_random = feeds is None
        if on_random:
            header = onnx.load(str(model_in), load_external_data=False)
            feeds = next(iter(open_source("random:1", graph_inputs(header)))).feeds
        padded = _half_padded(feeds) if on_random else None
        if padded is not None:
            # no data: padded or not is unknown, and masked Softmax is several times slower in
            # onnxruntime, so keep the graph that is never far behind in either case
            choice = choose_robust(paths, device, {"all attend": feeds, "half padded": padded}, budget_s=budget_s)
        else:
            choice = choose_fastest(paths, device, feeds, budget_s=budget_s)
        kept = summaries[choice.chosen]
        rounding = _refine_kept(choice.chosen, bases[choice.chosen], paths, float_srcs, refine,
                                Path(tmp)) if refine else None
        model_out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = model_out.with_name(model_out.name + ".tmp")
        tmp_out.write_bytes(paths[choice.chosen].read_bytes())
        os.replace(tmp_out, model_out)
    kept.model_out = str(model_out)
    kept.size_out_bytes = model_out.stat().st_size
    kept.passes.append(choice.describe())
    if rounding:
        kept.passes.append(f"then, on {choice.chosen} only: {rounding}")
    if padded is not None:
        kept.passes.append("timed on random inputs, with attention masks attending everywhere and with half of "
                           "the positions padded: give real inputs (--calib) to time on yours")
    kept.config = {**kept.config, "alternatives": choice.to_dict()}
    return EncoderChoice(kept, choice, {k: list(s.passes) for k, s in summaries.items()})
