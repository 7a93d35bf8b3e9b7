"""Safe model I/O: load and validate, describe, upgrade the opset, hash, save atomically."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from .errors import EdgequantError
from .fsutil import atomic_path, refuse_overwrite

# protobuf refuses to serialize a single message above 2 GiB; leave margin for the graph.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and shape (str/None for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class ModelInfo:
    path: str
    opset: int
    ir_version: int
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    size_bytes: int = 0
    initializer_bytes: int = 0

    @property
    def is_quantized(self) -> bool:
        quant_ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                     "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
        return any(op in quant_ops for op in self.op_counts)


def _check_external_data_paths(model: onnx.ModelProto, path: Path) -> bool:
    """Refuse external-data locations that escape the model's folder; True if any exist."""
    base = path.parent.resolve()
    found = False
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            raise EdgequantError(
                f"{path}: external data location {location!r} of tensor {tensor.name!r} "
                "points outside the model's folder; refusing to read it")
        if not target.is_file():
            raise EdgequantError(f"{path}: external data file {location!r} is missing")
    return found


def load_model(path: str | Path, *, check: bool = True, weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with clear one-line errors for every way the file can be wrong.

    ``weights=False`` leaves external-data tensors on disk (references only): for graph work on
    models too big to hold twice."""
    p = Path(path)
    if not p.exists():
        raise EdgequantError(f"{p}: no such file")
    if not p.is_file():
        raise EdgequantError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise EdgequantError(f"{p}: file is empty, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise EdgequantError(f"{p}: not a valid ONNX model (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise EdgequantError(f"{p}: not an ONNX model (no graph or opset); is the file truncated?")
    has_external = _check_external_data_paths(model, p)
    if has_external and weights:
        onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    if check:
        check_ops_known(model, p)
        try:
            if has_external or model.ByteSize() > _EXTERNAL_DATA_THRESHOLD:
                onnx.checker.check_model(str(p))
            else:
                onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgequantError(f"{p}: invalid ONNX model (truncated or corrupt?): {first}") from None
    return model


@lru_cache(maxsize=1)
def _ort_ops() -> frozenset[tuple[str, str]]:
    """(domain, op type) of every operator onnxruntime has a schema (and kernels) for."""
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema

    return frozenset((s.domain, s.name) for s in get_all_operator_schema())


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _graphs(sub)


def _nodes(graph: onnx.GraphProto):
    """Every node, control-flow bodies included."""
    for g in _graphs(graph):
        yield from g.node


def check_ops_known(model: onnx.ModelProto, path: str | Path) -> None:
    """One line naming the first op onnxruntime cannot run (a custom op whose library edgequant
    cannot load), before any tool prints onnxruntime's own traceback for it."""
    known = _ort_ops() | {(f.domain, f.name) for f in model.functions}   # model-local functions run
    for node in _nodes(model.graph):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) not in known:
            import onnxruntime

            name = f" {node.name!r}" if node.name else ""
            raise EdgequantError(
                f"{path}: node{name} uses {domain + ':' if domain else ''}{node.op_type}, which onnxruntime "
                f"{onnxruntime.__version__} has no kernel for (a custom op needs its own library, which edgequant "
                "cannot load)")


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise EdgequantError("model has no default-domain opset import")


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value_info.type.tensor_type
    dims: list[int | str | None] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    except (KeyError, TypeError):
        dtype = np.dtype(object)
    return TensorSpec(value_info.name, dtype, tuple(dims))


def graph_inputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = {i.name for i in model.graph.initializer}
    return tuple(_spec(v) for v in model.graph.input if v.name not in inits)


def has_depthwise_conv(model: onnx.ModelProto) -> bool:
    """A Conv with one input channel per group (MobileNet-style depthwise), read from weight shapes
    (no weight data needed)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = dims.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if group > 1 and w is not None and len(w) > 2 and w[0] == group and w[1] == 1:
            return True
    return False


#: compute other than weight MatMul/Gemm
_OTHER_COMPUTE = frozenset({"Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention"})


def dense_compute_only(model: onnx.ModelProto) -> bool:
    """Weight MatMul/Gemm are the model's only compute, If/Loop bodies included (an MLP, a keyword
    classifier, an embedding head; exporters wrap such graphs in shape-check Ifs): dynamic
    quantization covers all of it. Read from names and shapes alone."""
    graphs = list(_graphs(model.graph))     # one walk for both
    weights = {t.name for g in graphs for t in g.initializer}
    nodes = [n for g in graphs for n in g.node]
    if any(n.op_type in _OTHER_COMPUTE for n in nodes):
        return False
    return any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights for n in nodes)


def graph_outputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    return tuple(_spec(v) for v in model.graph.output)


def describe(model: onnx.ModelProto, path: str | Path = "") -> ModelInfo:
    counts = Counter(n.op_type for n in model.graph.node)
    init_bytes = sum(numpy_helper.to_array(t).nbytes if t.data_location != onnx.TensorProto.EXTERNAL else 0
                     for t in model.graph.initializer)
    size = Path(path).stat().st_size if path and Path(path).is_file() else model.ByteSize()
    return ModelInfo(
        path=str(path), opset=default_opset(model), ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_inputs(model), outputs=graph_outputs(model),
        op_counts=dict(counts.most_common()), size_bytes=int(size), initializer_bytes=int(init_bytes))


def model_size_bytes(path: str | Path) -> int:
    """On-disk size including external data files next to the model."""
    p = Path(path)
    total = p.stat().st_size
    model = onnx.load(str(p), load_external_data=False)
    seen: set[str] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if loc and loc not in seen:
                seen.add(loc)
                total += (p.parent / loc).stat().st_size
    return total


def is_large(path: str | Path) -> bool:
    """Too big for one protobuf (2 GiB): weights must stay in external data end to end."""
    return model_size_bytes(path) > _EXTERNAL_DATA_THRESHOLD


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The external-data files a model's tensors point to (relative to its folder)."""
    found: list[str] = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if loc and loc not in found:
                found.append(loc)
    return found


def save_referencing(model: onnx.ModelProto, out: str | Path, source: str | Path) -> Path:
    """Save a working copy of a model loaded with ``weights=False`` into another folder, with its
    external-data files copied beside it (onnx refuses symbolic and hard links to them as a
    security measure). Costs the weights' size in disk, never in memory."""
    import shutil

    out, source = Path(out), Path(source)
    for loc in external_locations(model):
        dest = out.parent / loc
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copyfile(source.parent / loc, dest)
    onnx.save_model(model, str(out))
    return out


def copy_model(src: str | Path, dest: str | Path) -> Path:
    """Copy a model file to ``dest`` with its external-data files, each written atomically; the copy's
    data file is named after it (``dest.name + ".data"``, numbered when there are several), so that
    copies of differently named models never share or overwrite one another's weights."""
    import shutil

    src, dest = Path(src), Path(dest)
    header = onnx.load(str(src), load_external_data=False)
    locations = external_locations(header)
    if not locations:
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return dest
    renamed = {loc: dest.name + (".data" if len(locations) == 1 else f".{i}.data") for i, loc in enumerate(locations)}
    for loc, name in renamed.items():
        with atomic_path(dest.parent / name) as tmp:
            shutil.copyfile(src.parent / loc, tmp)
    for tensor in onnx.external_data_helper._get_all_tensors(header):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in renamed:
                entry.value = renamed[entry.value]
    with atomic_path(dest) as tmp:
        onnx.save_model(header, str(tmp))
    return dest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upgrade_opset(model: onnx.ModelProto, min_opset: int, *, path: str | Path = "model") -> onnx.ModelProto:
    """Return the model converted to at least ``min_opset`` (per-channel DQ needs >= 13)."""
    current = default_opset(model)
    if current >= min_opset:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, min_opset)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter raises a variety of C++-backed errors
        raise EdgequantError(
            f"{path}: cannot upgrade opset {current} -> {min_opset}: {str(exc).splitlines()[0]}") from None
    return upgraded


def save_model(model: onnx.ModelProto, out: str | Path, *, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write ``model`` to ``out`` atomically; models over 2 GiB get a sidecar ``.data`` file."""
    out = Path(out)
    refuse_overwrite(out, *inputs)
    external = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    if external:
        data_name = out.name + ".data"
        with atomic_path(out.parent / data_name) as tmp_data:
            # onnx writes the data file next to the model under the given location name.
            tmp_model = tmp_data.with_suffix(".onnx")
            onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=tmp_data.name, size_threshold=1024)
            # Point locations at the final data file name before renaming both.
            saved = onnx.load(str(tmp_model), load_external_data=False)
            for t in onnx.external_data_helper._get_all_tensors(saved):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            tmp_model.unlink()
            with atomic_path(out) as tmp:
                onnx.save_model(saved, str(tmp))
    else:
        with atomic_path(out) as tmp:
            onnx.save_model(model, str(tmp))
    return out
