"""Quantization of a model over 2 GiB with its weights streamed from disk.

onnxruntime's quantizers load every weight, keep a shape-inferred copy of the model and build the
quantized one beside it: 3.3x the weights at peak on a 2.3 GB model (benchmarks/results/LARGE_MODEL.md).
Here the graph is edited without its weights, and each MatMul/Gemm weight is read from its external
file in blocks of rows, quantized with :mod:`edgequant.qmath` and written straight into the output's
external-data file: memory holds one block and one int8 weight, never the model.

The graphs are the ones onnxruntime's own quantizers write, so its CPU fusions fire at load:
dynamic: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` (-> DynamicQuantizeMatMul);
static: ``Q -> DQ`` on the activation and ``DQ`` on the int8 weight (-> MatMulIntegerToFloat).
Other ops, and weights that are not constant 2-D float tensors, stay float.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgequant import qmath
from edgequant.errors import EdgequantError
from edgequant.fsutil import atomic_path, refuse_overwrite

from .graph import attribute

STREAMED_OPS = ("MatMul", "Gemm")
BLOCK_ELEMENTS = 1 << 22        # float32 values read per block (16 MB)
ALIGN = 1 << 16                 # tensor offsets in the data file: onnxruntime maps aligned ones


@dataclass
class StreamedSummary:
    """What the streaming quantizer did."""

    mode: str
    quantized: list[str] = field(default_factory=list)           # node names
    float_nodes: dict[str, str] = field(default_factory=dict)    # node -> why it stays float
    weights_in_bytes: int = 0
    weights_out_bytes: int = 0

    def describe(self) -> str:
        left = f"; {len(self.float_nodes)} MatMul/Gemm left float" if self.float_nodes else ""
        return (f"model over 2 GiB: {self.mode} quantization streamed the weights from disk "
                f"({len(self.quantized)} MatMul/Gemm quantized, {self.weights_in_bytes / 2**20:.0f} MB of float "
                f"weights -> {self.weights_out_bytes / 2**20:.0f} MB{left})")


class _Weights:
    """The float initializers of a model loaded without its weights, readable in blocks of rows."""

    def __init__(self, model: onnx.ModelProto, folder: Path) -> None:
        self.folder = folder
        self.by_name = {t.name: t for t in model.graph.initializer}

    def float_matrix(self, name: str) -> tuple[int, int] | None:
        t = self.by_name.get(name)
        if t is None or t.data_type != TensorProto.FLOAT or len(t.dims) != 2:
            return None
        return int(t.dims[0]), int(t.dims[1])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.by_name[name]
        cols = int(t.dims[1])
        if t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)[start:stop]
        info = {e.key: e.value for e in t.external_data}
        path = self.folder / info["location"]
        with open(path, "rb") as f:
            f.seek(int(info.get("offset", 0)) + start * cols * 4)
            block = np.fromfile(f, dtype="<f4", count=(stop - start) * cols)
        if block.size != (stop - start) * cols:
            raise EdgequantError(f"{path}: external data of {name!r} is shorter than its shape says (truncated?)")
        return block.reshape(stop - start, cols)

    def blocks(self, name: str):
        rows, cols = self.float_matrix(name)
        step = max(1, BLOCK_ELEMENTS // max(cols, 1))
        for start in range(0, rows, step):
            yield start, self.rows(name, start, min(rows, start + step))


class _DataFile:
    """The output's one external-data file: tensors appended at aligned offsets."""

    def __init__(self, path: Path, location: str) -> None:
        self.path, self.location = path, location
        self.f = open(path, "wb")

    def _reserve(self, nbytes: int) -> int:
        end = self.f.seek(0, os.SEEK_END)
        offset = -(-end // ALIGN) * ALIGN
        self.f.truncate(offset + nbytes)
        return offset

    def _point(self, tensor: TensorProto, offset: int, nbytes: int) -> TensorProto:
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def matrix(self, name: str, shape: tuple[int, int], dtype: np.dtype, fill) -> TensorProto:
        """A ``shape`` tensor of ``dtype`` whose values ``fill(view)`` writes into a file-backed view."""
        nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
        offset = self._reserve(nbytes)
        self.f.flush()
        view = np.memmap(self.path, dtype=dtype, mode="r+", offset=offset, shape=shape)
        fill(view)
        view.flush()
        del view                                   # unmapped: its pages stop counting as ours
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=shape)
        return self._point(tensor, offset, nbytes)

    def copy(self, tensor: TensorProto, folder: Path) -> TensorProto:
        """A float initializer that stays float: its external bytes copied over in chunks."""
        info = {e.key: e.value for e in tensor.external_data}
        nbytes = int(info["length"]) if "length" in info else (folder / info["location"]).stat().st_size
        offset = self._reserve(0)
        self.f.seek(offset)
        with open(folder / info["location"], "rb") as src:
            src.seek(int(info.get("offset", 0)))
            left = nbytes
            while left:
                chunk = src.read(min(left, 1 << 24))
                if not chunk:
                    raise EdgequantError(f"{folder / info['location']}: external data of {tensor.name!r} is truncated")
                self.f.write(chunk)
                left -= len(chunk)
        out = TensorProto()
        out.CopyFrom(tensor)
        return self._point(out, offset, nbytes)

    def close(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class _Site:
    """One MatMul/Gemm whose weight is quantized: ``weight`` is read [K, N] (``transposed``: stored [N, K])."""

    node: onnx.NodeProto
    weight: str
    transposed: bool


def _sites(model: onnx.ModelProto, weights: _Weights, op_types, exclude) -> tuple[list[_Site], dict[str, str]]:
    sites, left = [], {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in STREAMED_OPS or (op_types and node.op_type not in op_types):
            continue
        name = node.name or f"{node.op_type}_{i}"
        if name in exclude:
            left[name] = "excluded"
            continue
        if len(node.input) < 2 or weights.float_matrix(node.input[1]) is None:
            left[name] = "weight is not a constant 2-D float tensor"
            continue
        if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                                       or attribute(node, "beta", 1.0) != 1.0):
            left[name] = "Gemm with transA, alpha or beta"
            continue
        if not node.name:
            node.name = name
        sites.append(_Site(node, node.input[1], node.op_type == "Gemm" and bool(attribute(node, "transB", 0))))
    return sites, left


def activation_inputs(model_path: Path, config) -> list[str]:
    """The activations a static run quantizes (each quantized MatMul/Gemm's first input): what to calibrate."""
    model = onnx.load(str(model_path), load_external_data=False)
    sites, _ = _sites(model, _Weights(model, model_path.parent), config.op_types, set(config.exclude))
    return sorted({s.node.input[0] for s in sites})


def _weight_params(weights: _Weights, site: _Site, dtype: str, *, symmetric: bool, reduce_range: bool,
                   per_channel: bool) -> qmath.QParams:
    """Min/max of the weight per output channel (or whole), in one pass over its blocks."""
    lo = hi = None
    for _, block in weights.blocks(site.weight):
        axis = 1 if site.transposed else 0             # reduce over K, keep N
        b_lo, b_hi = (block.min(axis=axis), block.max(axis=axis)) if per_channel else (block.min(), block.max())
        if per_channel and site.transposed:             # rows are channels: blocks hold disjoint channels
            lo = b_lo if lo is None else np.concatenate([lo, b_lo])
            hi = b_hi if hi is None else np.concatenate([hi, b_hi])
        else:
            lo = b_lo if lo is None else np.minimum(lo, b_lo)
            hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise EdgequantError(f"weight {site.weight!r} contains NaN or Inf")
    return qmath.compute_qparams(lo, hi, dtype, symmetric=symmetric, reduce_range=reduce_range,
                                 axis=1 if per_channel else None)


def _write_weight(weights: _Weights, site: _Site, qp: qmath.QParams, data: _DataFile, name: str) -> TensorProto:
    rows, cols = weights.float_matrix(site.weight)
    shape = (cols, rows) if site.transposed else (rows, cols)
    np_dtype = qmath.QTYPES[qp.dtype][2]

    def fill(view: np.ndarray) -> None:
        for start, block in weights.blocks(site.weight):
            if site.transposed:        # stored rows are output channels: they become columns
                part = qmath.QParams(qp.scale[start:start + len(block)] if qp.axis is not None else qp.scale,
                                     qp.zero_point[start:start + len(block)] if qp.axis is not None else qp.zero_point,
                                     qp.dtype, qp.qmin, qp.qmax, None if qp.axis is None else 0)
                view[:, start:start + len(block)] = qmath.quantize(block, part).T
            else:
                view[start:start + len(block)] = qmath.quantize(block, qp)

    return data.matrix(name, shape, np_dtype, fill)


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def quantize_streaming(src: Path, out: Path, config, *, ranges: dict[str, tuple[float, float]] | None = None,
                       inputs: tuple[Path, ...] = ()) -> StreamedSummary:
    """Quantize ``src`` (weights in external data) into ``out`` + ``out.data``, written atomically.

    ``config`` is a :class:`edgequant.quantize_config.QuantizeConfig` (mode, per-channel, types,
    reduce range, op types, exclusions); static mode needs ``ranges`` for :func:`activation_inputs`."""
    src, out = Path(src), Path(out)
    refuse_overwrite(out, src, *inputs)
    static = config.mode == "static"
    if static and config.activation_type not in ("uint8", "int8"):
        raise EdgequantError(f"{src}: {config.activation_type} activations are not supported on a model over "
                             "2 GiB (its weights are streamed: 8-bit activations only)")
    model = onnx.load(str(src), load_external_data=False)
    weights = _Weights(model, src.parent)
    sites, left = _sites(model, weights, config.op_types, set(config.exclude))
    summary = StreamedSummary(config.mode, float_nodes=left)
    act_type = "uint8" if (not static or config.activations_to_uint8) else config.activation_type
    signed = config.weight_type == "int8"
    data_name = out.name + ".data"
    new_inits: dict[str, TensorProto] = {}
    before: dict[int, list[onnx.NodeProto]] = {}       # node index -> nodes inserted before it
    activation: dict[str, tuple[str, ...]] = {}        # float tensor -> its quantized form's names
    quantized_weight: dict[str, tuple[str, str, str]] = {}
    dequantized_weight: set[str] = set()               # static: one DQ per weight, however many readers
    index_of = {id(n): i for i, n in enumerate(model.graph.node)}
    with atomic_path(out.parent / data_name) as tmp_data:
        data = _DataFile(tmp_data, data_name)
        try:
            for site in sites:
                node, i = site.node, index_of[id(site.node)]
                x = node.input[0]
                if static and x not in (ranges or {}):
                    summary.float_nodes[node.name] = "no calibrated range for its input"
                    continue
                key = (site.weight, site.transposed)     # a weight read both ways gets both layouts
                if key not in quantized_weight:
                    qp = _weight_params(weights, site, config.weight_type, reduce_range=config.reduce_range,
                                        symmetric=config.weight_symmetric and signed, per_channel=config.per_channel)
                    stem = site.weight + ("_transposed" if site.transposed else "")
                    wq = f"{stem}_quantized"
                    new_inits[wq] = _write_weight(weights, site, qp, data, wq)
                    new_inits[f"{stem}_scale"] = _const(f"{stem}_scale", qp.scale)
                    new_inits[f"{stem}_zero_point"] = _const(f"{stem}_zero_point", qp.zero_point)
                    quantized_weight[key] = (wq, f"{stem}_scale", f"{stem}_zero_point")
                    rows, cols = weights.float_matrix(site.weight)
                    summary.weights_in_bytes += rows * cols * 4
                    summary.weights_out_bytes += rows * cols * np.dtype(qmath.QTYPES[qp.dtype][2]).itemsize
                wq, ws, wz = quantized_weight[key]
                inserted = before.setdefault(i, [])
                y = node.output[0]
                mm_out = f"{node.name}_matmul_output" if node.op_type == "Gemm" and len(node.input) > 2 else y
                if static:
                    if x not in activation:
                        lo, hi = ranges[x]
                        aq = qmath.compute_qparams(lo, hi, act_type, symmetric=config.activation_symmetric)
                        names = (f"{x}_scale", f"{x}_zero_point", f"{x}_quantized", f"{x}_dequantized")
                        new_inits[names[0]] = _const(names[0], aq.scale)
                        new_inits[names[1]] = _const(names[1], aq.zero_point)
                        inserted += [helper.make_node("QuantizeLinear", [x, names[0], names[1]], [names[2]],
                                                      name=f"{x}_QuantizeLinear"),
                                     helper.make_node("DequantizeLinear", [names[2], names[0], names[1]], [names[3]],
                                                      name=f"{x}_DequantizeLinear")]
                        activation[x] = names
                    w_dq = f"{wq}_dequantized"
                    if w_dq not in dequantized_weight:
                        axis = {"axis": 1} if config.per_channel else {}
                        inserted.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [w_dq],
                                                         name=f"{wq}_DequantizeLinear", **axis))
                        dequantized_weight.add(w_dq)
                    inserted.append(helper.make_node("MatMul", [activation[x][3], w_dq], [mm_out], name=node.name))
                else:
                    if x not in activation:
                        names = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
                        inserted.append(helper.make_node("DynamicQuantizeLinear", [x], list(names),
                                                         name=f"{x}_DynamicQuantizeLinear"))
                        activation[x] = names
                    xq, xs, xz = activation[x]
                    p = node.name
                    inserted += [
                        helper.make_node("Mul", [xs, ws], [f"{p}_scales"], name=f"{p}_scales_mul"),
                        helper.make_node("MatMulInteger", [xq, wq, xz, wz], [f"{p}_int32"], name=p),
                        helper.make_node("Cast", [f"{p}_int32"], [f"{p}_int32_float"], name=f"{p}_cast",
                                         to=TensorProto.FLOAT),
                        helper.make_node("Mul", [f"{p}_int32_float", f"{p}_scales"], [mm_out], name=f"{p}_rescale")]
                if mm_out != y:
                    inserted.append(helper.make_node("Add", [mm_out, node.input[2]], [y], name=f"{node.name}_bias"))
                summary.quantized.append(node.name)
            replaced = {id(s.node) for s in sites if s.node.name in summary.quantized}
            nodes = []
            for i, n in enumerate(model.graph.node):
                nodes.extend(before.get(i, []))
                if id(n) not in replaced:
                    nodes.append(n)
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            read = {x for n in nodes for x in n.input} | {o.name for o in model.graph.output}
            kept = []
            for t in model.graph.initializer:
                if t.name not in read:
                    continue                    # a weight now read only in its quantized form
                kept.append(data.copy(t, src.parent) if t.data_location == TensorProto.EXTERNAL else t)
            del model.graph.initializer[:]
            model.graph.initializer.extend([*kept, *new_inits.values()])
        finally:
            data.close()
        with atomic_path(out) as tmp_model:
            onnx.save_model(model, str(tmp_model))
    return summary
