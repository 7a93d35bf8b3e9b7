"""The one preparation path: the FP32 graph every quantizer (and the sensitivity analysis) sees.

Steps, each recorded: edgequant's exact FP32 rewrites (PRelu -> Relu form) -> opset upgrade
(per-channel DequantizeLinear needs 13) -> for dynamic Gemm quantization, Gemm -> MatMul + Add
-> ORT's ``quant_pre_process`` (BatchNorm/constant folding and shape inference) with graceful
fallbacks: its symbolic shape inference fails on many real models, so we retry without it and,
as a last resort, quantize the un-preprocessed model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from edgequant import model as model_io
from edgequant.fsutil import scratch_cwd

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A quantizer-ready copy of a model and what was done to get it."""

    path: Path
    passes: list[str] = field(default_factory=list)      # machine-readable steps (summaries)
    notes: list[str] = field(default_factory=list)       # what a user should know
    warnings: list[str] = field(default_factory=list)    # steps that failed and were skipped


def prepare(model_path: Path, work: Path, *, mode: str = "static", per_channel: bool = True,
            gemm_to_matmul: bool = False, target: str = "auto") -> Prepared:
    """Write the quantizer-ready copy of ``model_path`` under ``work`` (a per-run temp folder).

    ``mode="dynamic"`` skips ORT's graph optimization (it would fuse MatMul+Add back into Gemm).
    ``target`` picks the exact rewrites: CPU speed rewrites (PRelu) where the rule allows them,
    the accelerator's own (qdq.htp_rules) for qnn.
    """
    from edgequant.graph_pass import run_passes
    from edgequant.rewrites import apply_exact_rewrites
    from edgequant.targets import resolve_target

    from .htp_rules import HTP_REWRITES

    out = Prepared(Path(model_path))
    large = model_io.is_large(model_path)   # over 2 GiB: weights stay on disk, graph work only
    model = model_io.load_model(model_path, weights=not large)
    localized = _subgraph_local_initializers(model)
    if localized:
        out.passes.append(f"subgraph_local_initializers({localized} initializer(s) copied into If/Loop bodies)")
    if not large:
        from .subgraphs import fold_body_weights

        folded = fold_body_weights(model)   # exporters write body weights as Constant (chains)
        if folded:
            out.passes.append(f"fold_body_weights({folded} If/Loop/Scan body weight(s) folded into initializers)")
    rule = resolve_target(target)
    if rule.exact_rewrites:
        out.notes.extend(apply_exact_rewrites(model))
    if rule.name == "qnn":
        out.notes.extend(f"{r.changed} {r.description}" for r in run_passes(model, HTP_REWRITES) if r.changed)
    min_opset = 13 if (per_channel or mode == "static") else 11
    opset = model_io.default_opset(model)
    if opset < min_opset:
        model = model_io.upgrade_opset(model, min_opset, path=model_path)
        out.passes.append(f"upgrade_opset({opset}->{min_opset})")
        out.notes.append(f"opset upgraded {opset} -> {min_opset} (per-channel DequantizeLinear needs >= 13)")
    changed = bool(out.passes or out.notes)     # the graph differs from the file on disk
    if gemm_to_matmul and not large:     # over 2 GiB the streaming quantizer rewrites Gemm itself
        n = _gemm_to_matmul(model)
        if n:
            out.notes.append(f"{n} Gemm rewritten as MatMul+Add for dynamic quantization")
    staged = work / "staged.onnx"
    if large:
        # one protobuf cannot hold it: the weights stay in their external files end to end, and
        # ORT's pre-processing (which loads and optimizes a full copy) is skipped; unchanged, the
        # quantizer reads the original file itself
        out.notes.append("model over 2 GiB: weights kept in external data; ORT's pre-processing skipped "
                         "(it would hold the weights twice)")
        if changed:
            out.path = model_io.save_referencing(model, staged, model_path)
        return out
    onnx.save_model(model, str(staged))
    del model
    out.path = preprocess(staged, work / "prepared.onnx", out.passes, out.warnings, optimize=mode == "static")
    if mode == "static":
        out.path = _unshared_biases(out.path, work / "unshared.onnx", out.passes)
        out.path = _typed_for_quantizer(out.path, work / "typed.onnx", out.passes)
        if rule.exact_rewrites:   # after quant_pre_process: it inlines HardSwish into HardSigmoid + Mul
            out.path = _graph_passes(out.path, work / "rewritten.onnx", _static_passes(rule.name), out)
    return out


def _static_passes(target: str) -> tuple:
    """The exact FP32 rewrites of a static CPU recipe: Hard-Swish/squeeze-excite forms onnxruntime
    quantizes well, then (where measured) depthwise channel counts its fast INT8 kernel takes."""
    from .conv_channels import CHANNEL_PAD_TARGETS
    from .depthwise_channels import PadDepthwiseChannels
    from .hard_activations import PREPARE_PASSES

    return PREPARE_PASSES + ((PadDepthwiseChannels(),) if target in CHANNEL_PAD_TARGETS else ())


def _graph_passes(src: Path, dst: Path, passes: tuple, out: Prepared) -> Path:
    """``passes`` over ``src`` into ``dst`` (``src`` when none applies)."""
    from edgequant.graph_pass import run_passes

    model = model_io.load_model(src)
    done = [r for r in run_passes(model, passes) if r.changed]
    if not done:
        return src
    onnx.save_model(model, str(dst))
    out.passes.extend(r.label for r in done)
    out.notes.extend(f"{r.changed} {r.description}" for r in done)
    return dst


def _import_ort_tools_without_torch() -> None:
    """``quant_pre_process`` imports ``onnxruntime.tools``, which imports torch whenever it is
    installed (``edgequant[qat]``) only to offer a PyTorch export helper: ~170 MB and seconds in every
    quantizing process. Import it once with torch hidden, unless this process already uses torch."""
    import sys

    if "torch" in sys.modules or "onnxruntime.tools" in sys.modules:
        return
    sys.modules["torch"] = None          # find_spec("torch") -> None: onnxruntime.tools skips the helper
    try:
        import onnxruntime.tools  # noqa: F401
    finally:
        del sys.modules["torch"]


def preprocess(src: Path, dst: Path, passes: list[str], warnings: list[str], *, optimize: bool = True) -> Path:
    """``quant_pre_process`` into ``dst``, retrying without symbolic shape inference; ``src``
    itself when both fail. ``optimize=False`` skips ORT's graph optimization."""
    _import_ort_tools_without_torch()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [("quant_pre_process", {}),
                ("quant_pre_process(skip_symbolic_shape)", {"skip_symbolic_shape": True})]
    src, dst = Path(src).resolve(), Path(dst).resolve()
    for label, kwargs in attempts:
        try:
            with scratch_cwd(dst.parent):
                quant_pre_process(str(src), str(dst), skip_optimization=not optimize, **kwargs)
            passes.append(label + (": BatchNorm/constant folding, shape inference" if optimize else ": shape inference"))
            return dst
        except Exception as exc:  # ORT raises many types here; keep going with less.
            log.debug("%s failed: %s", label, exc)
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            warnings.append(f"{label} failed: {first.strip()[:200]}")
    warnings.append("quantizing the model without ORT pre-processing")
    return src


def _subgraphs(graph: onnx.GraphProto):
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph, its nested subgraphs included, reads from an enclosing scope."""
    own = {t.name for t in graph.initializer} | {i.name for i in graph.input} \
        | {o for n in graph.node for o in n.output}
    used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    for sub in _subgraphs(graph):
        used |= _outer_names(sub)
    return used - own


def _subgraph_local_initializers(model: onnx.ModelProto) -> int:
    """Copy the top-level initializers an If/Loop/Scan body reads into that body and drop those
    the top level no longer uses; returns how many were copied. Every top-level pass here and in
    ORT's quantizers sees only top-level uses: Gemm -> MatMul's clean-up and quantize_dynamic
    then lose them ("unknown initializers"), quantize_static deletes them as unused and leaves a
    graph onnxruntime refuses (openWakeWord's classifiers run a verifier in an If body this way)."""
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    moved = set()
    for sub in _subgraphs(graph):
        for name in sorted(_outer_names(sub) & set(by_name)):
            copy = onnx.TensorProto()
            copy.CopyFrom(by_name[name])
            sub.initializer.append(copy)
            moved.add(name)
    if moved:
        top_used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [t for t in graph.initializer if t.name not in moved or t.name in top_used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(moved)


def _typed_for_quantizer(src: Path, dst: Path, passes: list[str]) -> Path:
    """``src`` with value_info for the activations only onnxruntime's symbolic inference types
    (contrib-op outputs and what follows them) in ``dst``; ``src`` when there are none. The static
    quantizer reads ONNX's own inference alone and leaves an untyped tensor float: a MatMul reading a
    SkipLayerNormalization or Inverse output would stay float. ``quant_pre_process`` writes these
    itself unless its symbolic inference (which does not guess unknown ranks) failed."""
    from .graph import quantizer_unseen, symbolic_value_infos

    model = model_io.load_model(src)
    untyped = quantizer_unseen(model)
    if not untyped:
        return src
    typed = [vi for vi in symbolic_value_infos(model) if vi.name in untyped and vi.type.tensor_type.elem_type]
    if not typed:
        return src
    model.graph.value_info.extend(typed)
    onnx.save_model(model, str(dst))
    passes.append(f"type_for_quantizer({len(typed)} activation(s) typed by onnxruntime's symbolic shape inference)")
    return dst


_BIAS_OPS = ("Conv", "ConvTranspose", "Gemm")


def _unshared_biases(src: Path, dst: Path, passes: list[str]) -> Path:
    """Give every Conv/ConvTranspose/Gemm its own bias initializer (``dst``; ``src`` when none
    is shared). ORT's QDQ quantizer copies a shared bias as ``<name><largest numeric suffix among
    initializers + 1>`` without looking at activation names: where the exporter numbered tensors
    the same way (tflite2onnx: ``x``, ``x1``, ``x2``), the copy takes an activation's name and the
    quantized graph feeds a bias into a Conv's data input (onnxruntime refuses to load it)."""
    header = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in header.graph.initializer}
    uses: dict[str, int] = {}
    for node in header.graph.node:
        if node.op_type in _BIAS_OPS and len(node.input) > 2 and node.input[2] in inits:
            uses[node.input[2]] = uses.get(node.input[2], 0) + 1
    if not any(n > 1 for n in uses.values()):
        return src
    del header
    model = model_io.load_model(src)
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    taken = set(by_name) | {x for n in graph.node for x in (*n.input, *n.output)} \
        | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    seen, copies = set(), 0
    for node in graph.node:
        if node.op_type not in _BIAS_OPS or len(node.input) < 3 or node.input[2] not in by_name:
            continue
        bias = node.input[2]
        if bias not in seen:
            seen.add(bias)
            continue
        k = 1
        while f"{bias}__edgequant_bias{k}" in taken:
            k += 1
        copy = onnx.TensorProto()
        copy.CopyFrom(by_name[bias])
        copy.name = f"{bias}__edgequant_bias{k}"
        taken.add(copy.name)
        graph.initializer.append(copy)
        node.input[2] = copy.name
        copies += 1
    onnx.save_model(model, str(dst))
    passes.append(f"unshare_biases({copies} shared bias initializer use(s) given their own copy)")
    return dst


def _gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite plain Gemm (alpha=beta=1, no transA) as MatMul + Add so dynamic quantization,
    whose integer-op registry has no Gemm, still covers fully connected layers."""
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or node.input[1] not in inits):
            new_nodes.append(node)
            continue
        b_name = node.input[1]
        if attrs.get("transB", 0):
            b = numpy_helper.to_array(inits[b_name]).T.copy()
            b_name = b_name + "_transposed"
            model.graph.initializer.append(numpy_helper.from_array(b, b_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return rewritten
