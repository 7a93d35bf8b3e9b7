"""The algorithm steps of static quantization, as :func:`edgequant.quantize.quantize_model` runs
them: activation ranges handed to onnxruntime as ``TensorQuantOverrides`` (robust min/max, MSE
search, streaming histograms), the FP32 graph passes before quantizing (equalization,
SmoothQuant), learned rounding and bias correction after; for the QNN target, first, input shapes
fixed from the calibration data. Each appends its one-line description to ``notes``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
import numpy as np
import onnx

from . import model as model_io
from .errors import EdgequantError
from .quantize_config import HISTOGRAM_METHODS, QuantizeConfig


def static_shapes(model_path: Path, calibration, work: Path, notes: list[str]) -> Path:
    """``model_path`` itself when its inputs have static shapes (HTP compiles nothing else), else a
    copy in ``work`` whose dynamic dimensions are fixed to the first calibration sample's shapes:
    the shapes the model is calibrated, and so deployed, with."""
    model = onnx.load(str(model_path), load_external_data=False)
    dynamic = [s for s in model_io.graph_inputs(model) if not s.is_static]
    if not dynamic:
        return model_path
    names = ", ".join(s.name for s in dynamic)
    if calibration is None or calibration.synthetic:     # random data's sizes would be made up
        raise EdgequantError(f"{model_path}: target qnn needs static input shapes; dynamic inputs: {names} "
                             "(give real --calib data and they are fixed to its shapes)")
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    feeds = next(iter(calibration)).feeds
    model = model_io.load_model(model_path)
    fixed = []
    for spec in dynamic:
        shape = list(np.shape(feeds[spec.name]))
        if len(shape) != len(spec.shape):
            raise EdgequantError(f"{calibration.spec}: input {spec.name!r} has rank {len(shape)}, the model's "
                                 f"{len(spec.shape)}")
        make_input_shape_fixed(model.graph, spec.name, shape)
        fixed.append(f"{spec.name} {shape}")
    out = work / "static_shapes.onnx"
    model_io.save_model(model, out)
    notes.append(f"target qnn compiles static shapes: dynamic inputs fixed to the calibration data's ({', '.join(fixed)})")
    return out


def range_overrides(src: Path, config: QuantizeConfig, calibration, notes: list[str],
                    on_sample: Callable[[int], None] | None = None) -> dict:
    """``TensorQuantOverrides`` rmin/rmax (QDQ) of every activation: :mod:`edgequant.algorithms.ranges`
    for minmax (robust where samples disagree, else the global min/max, as ORT's MinMax computes it),
    then for mse :mod:`edgequant.algorithms.range_search` from those (or the global) ranges. With
    every range given, ORT's own calibration pass needs one sample (:func:`covers_calibration`)."""
    mse = config.calib_method == "mse"
    if config.quant_format != "qdq" or not (mse or (config.robust_ranges and config.calib_method == "minmax")):
        return {}
    from .algorithms.ranges import robust_ranges
    from .devices import analysis_cpu

    result = robust_ranges(src, calibration, analysis_cpu(), on_sample=on_sample)
    if config.robust_ranges:
        notes.append(result.describe())
    model = onnx.load(str(src), load_external_data=False)
    if not mse:
        return as_ort_adjusts(model, config, result.overrides(every=True))
    from .algorithms.range_search import search_ranges

    base = {t: (r.rmin, r.rmax) if config.robust_ranges else (r.global_rmin, r.global_rmax)
            for t, r in result.ranges.items()}
    act = "uint8" if config.activations_to_uint8 else config.activation_type
    searched = search_ranges(src, calibration, analysis_cpu(), base, activation_type=act,
                             symmetric=config.activation_symmetric)
    notes.append(searched.describe())
    return as_ort_adjusts(model, config, searched.overrides())


def covers_calibration(src: Path, config: QuantizeConfig, ranges: dict) -> bool:
    """Does ``ranges`` set every tensor ORT's calibrator would measure (the float inputs and outputs of
    the nodes it quantizes, after shape inference, as its ``select_tensors_to_calibrate``)?"""
    if not ranges:
        return False
    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    except Exception:  # noqa: BLE001 - then ORT calibrates as usual
        return False
    g = model.graph
    floats = {vi.name for vi in [*g.value_info, *g.output, *g.input]
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    floats -= {t.name for t in g.initializer}
    wanted = {t for n in g.node if config.op_types is None or n.op_type in config.op_types
              for t in [*n.input, *n.output] if t in floats}
    return wanted <= set(ranges)


def activation_ranges(src: Path, config: QuantizeConfig, calibration, tensors: list[str],
                      notes: list[str]) -> dict[str, tuple[float, float]]:
    """(rmin, rmax) of ``tensors`` only, by the config's method: robust or global min/max reduced in the
    graph, or streaming histograms. For the streaming quantizer of models over 2 GiB, whose calibration
    session is the one copy of the weights in memory."""
    from .devices import analysis_cpu

    if config.calib_method in HISTOGRAM_METHODS:
        return dict(_histograms(src, config, calibration, notes, tensors=tensors).ranges)
    from .algorithms.ranges import robust_ranges

    result = robust_ranges(src, calibration, analysis_cpu(), tensors=tensors)
    if result.samples == 0:
        raise EdgequantError(f"{calibration.spec}: no calibration samples")
    if config.robust_ranges:
        notes.append(result.describe())
    return {t: (r.rmin, r.rmax) if config.robust_ranges else (r.global_rmin, r.global_rmax)
            for t, r in result.ranges.items()}


def softmax_floor(src: Path, calibration, ranges: dict, notes: list[str]) -> dict:
    """``ranges`` plus :mod:`edgequant.algorithms.softmax_floor`'s clamped Softmax inputs (an
    attention mask's -10000 no longer sets the scores' 8-bit step)."""
    from .algorithms.softmax_floor import softmax_floors
    from .devices import analysis_cpu

    floors = softmax_floors(src, calibration, analysis_cpu())
    if floors.floors:
        notes.append(floors.describe())
    return floors.overrides(ranges)


def cap_sentinels(ranges: dict, notes: list[str]) -> dict:
    """``ranges`` with float sentinels (an attention mask's finfo.min) capped
    (:mod:`edgequant.algorithms.sentinels`): onnxruntime's QLinearAdd overflows on their scale."""
    from .algorithms.sentinels import cap_sentinels as cap

    caps = cap(ranges)
    if caps.capped:
        notes.append(caps.describe())
    return caps.overrides


def equalize(prepared: Path, config: QuantizeConfig, calibration, notes: list[str]) -> Path:
    """:mod:`edgequant.algorithms.equalization` on the prepared FP32 graph (BatchNorm already folded),
    its output change measured on the first calibration samples; then, as the paper does, the high
    biases equalization leaves behind are absorbed (:mod:`edgequant.algorithms.bias_absorption`)."""
    from .algorithms.bias_absorption import absorb_high_biases
    from .algorithms.equalization import equalize_file
    from .devices import analysis_cpu

    out = prepared.with_name("equalized.onnx")
    notes.append(equalize_file(prepared, out, relu6=config.equalize_relu6, samples=calibration,
                               device=analysis_cpu()).describe())
    absorbed = prepared.with_name("absorbed.onnx")
    notes.append(absorb_high_biases(out, absorbed, calibration, analysis_cpu()).describe())
    return absorbed


def smooth(prepared: Path, calibration, notes: list[str], config: QuantizeConfig) -> Path:
    """:mod:`edgequant.algorithms.smoothquant` on the prepared FP32 graph, its strengths chosen for
    the config's quantizer (per-call ranges in dynamic mode; weight bits and granularity)."""
    from .algorithms.smoothquant import smooth_file
    from .devices import analysis_cpu

    out = prepared.with_name("smoothed.onnx")
    notes.append(smooth_file(prepared, out, calibration, analysis_cpu(), dynamic=config.mode == "dynamic",
                             reduce_range=config.reduce_range, per_channel=config.per_channel).describe())
    return out


def histogram_overrides(src: Path, config: QuantizeConfig, calibration, notes: list[str],
                         on_sample: Callable[[int], None] | None) -> dict:
    """``TensorQuantOverrides`` rmin/rmax of every activation from :mod:`edgequant.algorithms.histogram`:
    onnxruntime's HistogramCalibrater keeps every intermediate tensor of every sample (GBs)."""
    result = _histograms(src, config, calibration, notes, on_sample=on_sample)
    return as_ort_adjusts(onnx.load(str(src), load_external_data=False), config, result.overrides())


def _histograms(src: Path, config: QuantizeConfig, calibration, notes: list[str], *, tensors=None, on_sample=None):
    """:func:`edgequant.algorithms.histogram.histogram_ranges` by the config's method (all activations, or
    ``tensors``), its one line appended to ``notes``."""
    from .algorithms.histogram import histogram_ranges
    from .devices import analysis_cpu
    from .measure.session import SessionConfig

    # graph optimization off, as ORT's calibrator runs it: every tensor is the float graph's own
    device = analysis_cpu(SessionConfig(graph_optimization="disable"))
    symmetric = bool(config.extra_options.get("CalibTensorRangeSymmetric", True))  # ORT's percentile default
    result = histogram_ranges(src, calibration, device, config.calib_method, percentile=config.calib_percentile,
                              symmetric=symmetric, tensors=tensors, on_sample=on_sample)
    if result.samples == 0:
        raise EdgequantError(f"{calibration.spec}: no calibration samples")
    notes.append(result.describe())
    return result


def as_ort_adjusts(model: onnx.ModelProto, config: QuantizeConfig, overrides: dict) -> dict:
    """What ORT's quantizer does to calibrated ranges (``adjust_tensor_ranges``) but not to
    overrides: a quantized Relu/Clip that alone reads its input lends that input its output's
    range (so the fused Conv->Relu keeps the full 8 bits), and a quantized Softmax's output keeps
    ORT's [0, 1]. A Relu's range starts at 0: ORT drops the Relu and lets its output's Q clip,
    which a range below 0 (distribution's +-absmax) would not do (ORT's own distribution
    calibration yields a garbage model there)."""
    def quantized(node: onnx.NodeProto) -> bool:
        return (config.op_types is None or node.op_type in config.op_types) and node.name not in config.exclude

    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    out = dict(overrides)
    for node in model.graph.node:
        if not quantized(node):
            continue
        if node.op_type == "Relu" and node.output[0] in out:
            (entry,) = out[node.output[0]]
            out[node.output[0]] = [{**entry, "rmin": max(entry["rmin"], np.float32(0.0))}]
        if node.op_type in ("Relu", "Clip") and readers.get(node.input[0]) == 1 and node.output[0] in out \
                and node.input[0] in out:
            out[node.input[0]] = out[node.output[0]]
        elif node.op_type == "Softmax":
            out.pop(node.output[0], None)
    return out


def keep_coarse_float(prepared: Path, qdq: Path, calibration, notes: list[str]) -> Path:
    """:mod:`edgequant.algorithms.coarse_tensors` on the freshly quantized model (CPU targets)."""
    from .algorithms.coarse_tensors import keep_coarse_float as keep
    from .devices import analysis_cpu

    if model_io.is_large(qdq):      # one protobuf cannot hold it; its Q/DQ pairs stay
        return qdq
    out = qdq.with_name("coarse_float.onnx")
    result = keep(prepared, qdq, out, calibration, analysis_cpu())
    if result.kept_float:
        notes.append(result.describe())
    return out


def correct_biases(prepared: Path, qdq: Path, calibration, notes: list[str]) -> Path:
    """:mod:`edgequant.algorithms.bias_correction` on the freshly quantized model."""
    from .algorithms.bias_correction import correct_biases
    from .devices import analysis_cpu

    out = qdq.with_name("bias_corrected.onnx")
    notes.append(correct_biases(prepared, qdq, out, calibration, analysis_cpu()).describe())
    return out


def adaround(prepared: Path, qdq: Path, calibration, notes: list[str]) -> Path:
    """:mod:`edgequant.algorithms.adaround` on the freshly quantized model."""
    from .algorithms import adaround as algo
    from .devices import analysis_cpu

    out = qdq.with_name("adarounded.onnx")
    notes.append(algo.adaround(prepared, qdq, out, calibration, analysis_cpu()).describe())
    return out


def gptq_rounding(float_model: Path, quantized: Path, calibration) -> str:
    """:mod:`edgequant.algorithms.gptq` on ``quantized`` (rewritten in place), ``float_model`` being
    the FP32 graph its quantizer saw; what it did, in one line."""
    from .algorithms import gptq as algo
    from .devices import analysis_cpu

    out = quantized.with_name(quantized.stem + ".gptq.onnx")
    done = algo.gptq(float_model, quantized, out, calibration, analysis_cpu())
    os.replace(out, quantized)
    return done.describe()


def with_overrides(extra: dict, ranges: dict) -> dict:
    """``extra`` with range overrides merged into its TensorQuantOverrides (a tensor's own
    entries, e.g. 16-bit quant_type, are kept)."""
    if not ranges:
        return extra
    merged = {t: [dict(e) for e in entries] for t, entries in (extra.get("TensorQuantOverrides") or {}).items()}
    for tensor, (entry,) in ranges.items():
        merged.setdefault(tensor, [{}])
        if len(merged[tensor]) == 1:  # per-channel overrides are left as the caller set them
            merged[tensor][0] = {**entry, **merged[tensor][0]}
    return {**extra, "TensorQuantOverrides": merged}


def quantizer_sees(extra: dict, src: Path) -> dict:
    """``extra`` without the overrides for ``src``'s activations that onnxruntime's quantizer cannot
    see: outputs of contrib ops (Inverse, a fused Attention) that only onnxruntime's symbolic
    inference types, which calibration and weight rounding use. The quantizer reads ONNX's own
    inference, leaves such a tensor float and refuses an override for it ("not present in the
    model"). A name the graph does not hold at all stays, for onnxruntime to report (a typo)."""
    from .qdq.graph import quantizer_unseen

    overrides = extra.get("TensorQuantOverrides")
    if not overrides:
        return extra
    unseen = quantizer_unseen(onnx.load(str(src), load_external_data=False))
    if not unseen & set(overrides):
        return extra
    return {**extra, "TensorQuantOverrides": {t: v for t, v in overrides.items() if t not in unseen}}


def scoped_config(config: QuantizeConfig, src: Path, *, enclosing: bool = False) -> QuantizeConfig:
    """``config`` with the ``TensorQuantOverrides`` of the tensors ``src``'s own graph holds.

    One onnxruntime quantizer call sees one graph and refuses an override for a tensor it does not
    see ("not present in the model"), while a tensor of an If branch is quantized when its branch
    is, with the same config (:mod:`edgequant.qdq.subgraph_static`). ``enclosing``: ``src`` is a
    branch cut out, so the names of the graphs around it go too; otherwise a name ``src`` holds
    nowhere is left for onnxruntime to report (a typo)."""
    from dataclasses import replace

    from .qdq.subgraphs import defined_names

    overrides = config.extra_options.get("TensorQuantOverrides")
    if not overrides:
        return config
    graph = onnx.load(str(src), load_external_data=False).graph
    own = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    elsewhere = defined_names(graph) - own
    kept = {t: v for t, v in overrides.items() if t in own or not (enclosing or t in elsewhere)}
    if len(kept) == len(overrides):
        return config
    return replace(config, extra_options={**config.extra_options, "TensorQuantOverrides": kept})
