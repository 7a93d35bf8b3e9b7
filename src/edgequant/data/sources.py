"""Data sources: validated against the model up front, then streamed one sample at a time.

See the package docstring (``edgequant.data``) for the source kinds and the sample-shape rule.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgequantError
from ..model import TensorSpec
from . import _npy
from ._npy import ArrayHeader
from .preprocess import IMAGE_SUFFIXES, Preprocess, check_image, load_image

ARRAY_SUFFIXES = (".npy", ".npz")
LABEL_KEYS = ("labels", "label")  # per-file .npz; a stacked .npz uses "labels" only
RANDOM_DYNAMIC_DIM = 128  # symbolic non-leading dims of random:N inputs (leading ones get 1)
RANDOM_INT_HIGH = 2  # random integer inputs are drawn from [0, RANDOM_INT_HIGH): valid ids, masks, types


@dataclass(frozen=True)
class Sample:
    """One model run's inputs (batch dim included where the model has one) and its label."""

    feeds: dict[str, np.ndarray]
    label: np.ndarray | None
    origin: str  # "calib.npz[17]", "imgs/cat.png": where to look when this sample is wrong


class DataSource:
    """A re-iterable, validated stream of :class:`Sample`; memory does not grow with its length."""

    def __init__(self, spec: str, inputs: Sequence[TensorSpec], count: int | None, *,
                 has_labels: bool = False, synthetic: bool = False, notes: Sequence[str] = ()) -> None:
        self.spec = spec
        self.inputs = tuple(inputs)
        self.count = count
        self.has_labels = has_labels
        self.synthetic = synthetic
        self.notes: tuple[str, ...] = tuple(notes)  # non-fatal facts worth showing (casts, guessed dims)

    def __iter__(self) -> Iterator[Sample]:
        return self._samples()

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError(f"{self.spec}: number of samples is unknown")
        return self.count

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(spec={self.spec!r}, count={self.count}, "
                f"has_labels={self.has_labels}, synthetic={self.synthetic})")

    def _samples(self) -> Iterator[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError


# --- shapes, dtypes and the per-input conversion ------------------------------------------------

def _fmt(shape: Sequence[int | str | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _is_dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim <= 0


def _symbol(dim: int | str | None) -> str | None:
    """The name that ties a dynamic dim across inputs, or None for an anonymous one: a
    placeholder without letters or digits (Paddle2ONNX writes '?' for every unknown dim, so
    height and width of one image share it without being equal)."""
    return dim if isinstance(dim, str) and any(c.isalnum() for c in dim) else None


@dataclass(frozen=True)
class _Input:
    """How raw arrays for one model input become feeds (validated once, applied per sample)."""

    spec: TensorSpec
    add_batch: bool  # sample has rank R-1: prepend a batch dim of 1
    check_range: bool  # int -> narrower int: verify values fit while streaming

    def feed(self, raw: np.ndarray, where: str, index: int) -> np.ndarray:
        x = raw[None] if self.add_batch else raw
        if self.check_range and x.size:
            info = np.iinfo(self.spec.dtype)
            if x.min() < info.min or x.max() > info.max:
                raise EdgequantError(f"{where}: sample {index} of input '{self.spec.name}' has values outside "
                                     f"the {self.spec.dtype} range of the model input")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, per sample
            out = np.array(x, dtype=self.spec.dtype, order="C", copy=True)  # never a view into a file map
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            what = ("contains NaN" if np.isnan(x).any() else "contains Inf" if np.isinf(x).any()
                    else f"overflows {out.dtype} (values too large for the model input type)")
            raise EdgequantError(f"{where}: sample {index} of input '{self.spec.name}' {what}")
        return out


def _check_dtype(src: np.dtype, spec: TensorSpec, where: str, what: str, notes: list[str]) -> bool:
    """Accept ``src`` data for ``spec`` or raise; returns True when values must be range-checked.

    Float data may be cast to any float type and integers to any integer type (narrowing is
    range-checked per sample); int <-> float and bool <-> number are refused, because that
    is almost always the wrong file or a missing preprocessing step.
    """
    dst = spec.dtype
    if dst.kind not in "fiub":
        raise EdgequantError(f"{where}: model input '{spec.name}' has type {dst}, which edgequant cannot feed")
    if src == dst:
        return False
    if src.kind == dst.kind == "f" or (src.kind in "iu" and dst.kind in "iu"):
        if src.kind in "iu" and np.can_cast(src, dst, "safe"):
            return False
        notes.append(f"{where}: {what} is {src}, cast to {dst} for model input '{spec.name}'")
        return src.kind in "iu"
    raise EdgequantError(f"{where}: {what} is {src} but model input '{spec.name}' is {dst}; "
                         "convert the data (only float->float and int->int casts are automatic)")


def _plan(spec: TensorSpec, sample_shape: tuple[int, ...], where: str, what: str, rule: str,
          src_dtype: np.dtype, notes: list[str]) -> tuple[_Input, tuple[int, ...]]:
    """Apply the sample-shape rule; return the conversion and the shape that will be fed."""
    rank = len(spec.shape)
    if len(sample_shape) == rank:
        add_batch, fed = False, sample_shape
    elif len(sample_shape) == rank - 1 and rank >= 1 and (_is_dynamic(spec.shape[0]) or spec.shape[0] == 1):
        add_batch, fed = True, (1, *sample_shape)
    else:
        raise EdgequantError(f"{where}: {what} does not fit model input '{spec.name}' {_fmt(spec.shape)}: {rule}")
    for axis, (want, got) in enumerate(zip(spec.shape, fed)):
        if not _is_dynamic(want) and want != got:
            raise EdgequantError(f"{where}: {what} gives samples of shape {_fmt(fed)} but model input "
                                 f"'{spec.name}' is {_fmt(spec.shape)} (dim {axis}: {got} != {want})")
    check_range = _check_dtype(src_dtype, spec, where, what, notes)
    return _Input(spec, add_batch, check_range), fed


def _check_symbols(fed: dict[str, tuple[int, ...]], inputs: Sequence[TensorSpec], where: str) -> None:
    """A symbolic dim shared by several inputs (e.g. 'seq') must take one value per sample."""
    seen: dict[str, tuple[int, str]] = {}
    for spec in inputs:
        for dim, value in zip(spec.shape, fed[spec.name]):
            if _symbol(dim) is not None:
                first = seen.setdefault(dim, (value, spec.name))
                if first[0] != value:
                    raise EdgequantError(f"{where}: dim '{dim}' is {first[0]} in input '{first[1]}' "
                                         f"but {value} in input '{spec.name}'")


def _stacked_rule(rank: int) -> str:
    return (f"expected {rank + 1} dims [samples, *input] or {rank} dims "
            "[samples along the batch axis, *input[1:]]")


# --- a single .npz / .npy with the samples along the first axis ---------------------------------

class _StackedSource(DataSource):
    """One file, first axis = samples; .npz arrays are keyed by input name (+ optional 'labels')."""

    def __init__(self, path: Path, inputs: Sequence[TensorSpec], limit: int | None) -> None:
        where = str(path)
        if path.suffix.lower() == ".npz":
            members = _npy.npz_headers(path)
            names = [s.name for s in inputs]
            missing = [n for n in names if n not in members]
            if missing:
                has = ", ".join(members) or "no arrays"
                raise EdgequantError(f"{where}: no array for model input '{missing[0]}' (file has: {has}); "
                                     f"save it with np.savez(path, **{{'{missing[0]}': array}})")
            extra = [k for k in members if k not in names and k != "labels"]
            if extra:
                raise EdgequantError(f"{where}: array '{extra[0]}' matches no model input (model inputs: "
                                     f"{', '.join(names)}; 'labels' is also allowed)")
        else:
            if len(inputs) != 1:
                raise EdgequantError(f"{where}: a .npy holds one array but the model has {len(inputs)} inputs "
                                     f"({', '.join(s.name for s in inputs)}); use an .npz keyed by input name")
            members = {inputs[0].name: ("", _npy.npy_header(path))}
        notes: list[str] = []
        counts: dict[str, int] = {}
        fed: dict[str, tuple[int, ...]] = {}
        self._plans: dict[str, tuple[str, ArrayHeader, _Input]] = {}
        for spec in inputs:
            member, header = members[spec.name]
            what = f"array '{spec.name}' {_fmt(header.shape)}"
            if not header.shape:
                raise EdgequantError(f"{where}: {what} is 0-d; the first axis must be samples")
            plan, fed[spec.name] = _plan(spec, header.shape[1:], where, what, _stacked_rule(len(spec.shape)),
                                         header.dtype, notes)
            self._plans[spec.name] = (member, header, plan)
            counts[spec.name] = header.shape[0]
        _check_symbols(fed, inputs, where)
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{k}': {v}" for k, v in counts.items())
            raise EdgequantError(f"{where}: inputs have different sample counts ({listed})")
        n = next(iter(counts.values()))
        self._labels = members.get("labels") if path.suffix.lower() == ".npz" else None
        if self._labels is not None and (not self._labels[1].shape or self._labels[1].shape[0] != n):
            got = self._labels[1].shape[0] if self._labels[1].shape else "a 0-d array"
            raise EdgequantError(f"{where}: 'labels' has {got} entries but the inputs have {n} samples")
        if n == 0:
            raise EdgequantError(f"{where}: contains no samples (first axis is 0)")
        self.path = path
        super().__init__(where, inputs, min(n, limit or n), has_labels=self._labels is not None, notes=notes)

    def _samples(self) -> Iterator[Sample]:
        where, count = self.spec, self.count or 0
        if self.path.suffix.lower() == ".npy":
            member, header, plan = next(iter(self._plans.values()))
            rows = _npy.npy_rows(self.path, header)
            for i in range(count):
                yield Sample({plan.spec.name: plan.feed(rows[i], where, i)}, None, f"{where}[{i}]")
            return
        with zipfile.ZipFile(self.path) as zf, ExitStack() as stack:
            streams = {name: stack.enter_context(_npy.member_rows(zf, member, header, f"{where}: array '{name}'"))
                       for name, (member, header, _) in self._plans.items()}
            labels = (stack.enter_context(_npy.member_rows(zf, *self._labels, f"{where}: 'labels'"))
                      if self._labels else None)
            for i in range(count):
                feeds = {name: plan.feed(_next_row(streams[name], where, i), where, i)
                         for name, (_, _, plan) in self._plans.items()}
                label = np.array(_next_row(labels, where, i)) if labels is not None else None
                yield Sample(feeds, label, f"{where}[{i}]")


def _next_row(rows: Iterator[np.ndarray], where: str, index: int) -> np.ndarray:
    try:
        return next(rows)
    except EdgequantError:
        raise
    except (StopIteration, *_npy.ZIP_ERRORS) as exc:
        raise EdgequantError(f"{where}: corrupt or truncated while reading sample {index} ({exc})") from None


# --- a folder with one sample per .npy / .npz file ----------------------------------------------

@dataclass(frozen=True)
class _FileSample:
    path: Path
    arrays: dict[str, tuple[str, ArrayHeader]]  # input name -> (zip member or "", header)
    plans: dict[str, _Input]
    label: tuple[str, ArrayHeader] | None


class _ArrayFolderSource(DataSource):
    """One sample per file, in sorted file-name order; headers of every file are checked up front."""

    def __init__(self, folder: Path, files: list[Path], inputs: Sequence[TensorSpec], limit: int | None) -> None:
        files = files[:limit] if limit else files
        notes: list[str] = []
        names = [s.name for s in inputs]
        self._files: list[_FileSample] = []
        for path in files:
            where = str(path)
            if path.suffix.lower() == ".npy":
                if len(inputs) != 1:
                    raise EdgequantError(f"{where}: a .npy holds one array but the model has {len(inputs)} inputs "
                                         f"({', '.join(names)}); use .npz files keyed by input name")
                arrays, label = {names[0]: ("", _npy.npy_header(path))}, None
            else:
                members = _npy.npz_headers(path)
                missing = [n for n in names if n not in members]
                if missing:
                    raise EdgequantError(f"{where}: no array for model input '{missing[0]}' "
                                         f"(file has: {', '.join(members) or 'no arrays'})")
                extra = [k for k in members if k not in names and k not in LABEL_KEYS]
                if extra:
                    raise EdgequantError(f"{where}: array '{extra[0]}' matches no model input (model inputs: "
                                         f"{', '.join(names)}; 'labels' or 'label' is also allowed)")
                label_keys = [k for k in LABEL_KEYS if k in members]
                if len(label_keys) > 1:
                    raise EdgequantError(f"{where}: has both 'labels' and 'label'; keep one")
                arrays = {n: members[n] for n in names}
                label = members[label_keys[0]] if label_keys else None
            fed: dict[str, tuple[int, ...]] = {}
            plans: dict[str, _Input] = {}
            for spec in inputs:
                header = arrays[spec.name][1]
                rule = f"expected {len(spec.shape)} dims, or {len(spec.shape) - 1} without the batch dim"
                file_notes: list[str] = []
                plans[spec.name], fed[spec.name] = _plan(
                    spec, header.shape, where, f"array '{spec.name}' {_fmt(header.shape)}", rule, header.dtype,
                    file_notes)
                if not self._files:  # the same cast note for every file would only be noise
                    notes += file_notes
            _check_symbols(fed, inputs, where)
            self._files.append(_FileSample(path, arrays, plans, label))
        with_labels = [f for f in self._files if f.label is not None]
        if with_labels and len(with_labels) != len(self._files):
            lacking = next(f for f in self._files if f.label is None)
            raise EdgequantError(f"{lacking.path}: has no 'labels'/'label' array but "
                                 f"{with_labels[0].path.name} has one; label every file or none")
        super().__init__(str(folder), inputs, len(self._files), has_labels=bool(with_labels), notes=notes)

    def _samples(self) -> Iterator[Sample]:
        for i, item in enumerate(self._files):
            where = str(item.path)
            if not item.path.is_file():
                raise EdgequantError(f"{where}: file disappeared while reading the data source")
            if item.path.suffix.lower() == ".npy":
                name, (_, header) = next(iter(item.arrays.items()))
                raw = _npy.npy_rows(item.path, header)
                yield Sample({name: item.plans[name].feed(raw, where, i)}, None, where)
                continue
            try:
                with zipfile.ZipFile(item.path) as zf:
                    feeds = {name: item.plans[name].feed(_npy.read_member(zf, m, h, where), where, i)
                             for name, (m, h) in item.arrays.items()}
                    label = np.array(_npy.read_member(zf, *item.label, where)) if item.label else None
            except EdgequantError:
                raise
            except _npy.ZIP_ERRORS as exc:
                raise EdgequantError(f"{where}: corrupt .npz ({exc})") from None
            yield Sample(feeds, label, where)


# --- a folder of images + a Preprocess spec ------------------------------------------------------

class _ImageSource(DataSource):
    """Images in sorted order. Images in class sub-folders get labels (see package docstring)."""

    def __init__(self, spec: str, files: list[tuple[Path, int | None]], inputs: Sequence[TensorSpec],
                 preprocess: Preprocess, limit: int | None) -> None:
        if len(inputs) != 1:
            raise EdgequantError(f"{spec}: images can feed single-input models only; this model has "
                                 f"{len(inputs)} inputs ({', '.join(s.name for s in inputs)})")
        self._spec_in = inputs[0]
        dtype = self._spec_in.dtype
        if dtype.kind not in "fiu":
            raise EdgequantError(f"{spec}: model input '{self._spec_in.name}' is {dtype}; images need a numeric input")
        if dtype.kind in "iu" and not preprocess.is_identity_normalization:
            raise EdgequantError(f"{spec}: model input '{self._spec_in.name}' is {dtype} (raw pixels); "
                                 "use scale=1 with mean=0 and std=1 in the preprocessing spec")
        shape = self._spec_in.shape
        image = preprocess.output_shape()
        fed = (1, *image) if len(shape) == 4 else image
        wrong = len(shape) not in (3, 4) or any(
            not _is_dynamic(want) and want != got for want, got in zip(shape, fed))
        if wrong:
            hint = ""
            if len(shape) == 4 and shape[1] in (1, 3) and preprocess.layout == "nhwc":
                hint = " (try layout=nchw)"
            elif len(shape) == 4 and shape[3] in (1, 3) and preprocess.layout == "nchw":
                hint = " (try layout=nhwc)"
            raise EdgequantError(f"{spec}: preprocessing gives {_fmt(fed)} ({preprocess.describe()}) but model "
                                 f"input '{self._spec_in.name}' is {_fmt(shape)}{hint}")
        files = files[:limit] if limit else files
        for path, _ in files:
            check_image(path)
        self._files = files
        self._pp = preprocess
        self._add_batch = len(shape) == 4
        has_labels = bool(files) and files[0][1] is not None
        super().__init__(spec, inputs, len(files), has_labels=has_labels)

    def _samples(self) -> Iterator[Sample]:
        plan = _Input(self._spec_in, self._add_batch, check_range=False)
        for i, (path, label) in enumerate(self._files):
            arr = load_image(path, self._pp)
            if self._spec_in.dtype.kind in "iu":
                arr = np.clip(np.rint(arr), max(0, np.iinfo(self._spec_in.dtype).min),
                              min(255, np.iinfo(self._spec_in.dtype).max))
            lab = np.array(label, dtype=np.int64) if label is not None else None
            yield Sample({self._spec_in.name: plan.feed(arr, str(path), i)}, lab, str(path))


def _image_files(folder: Path) -> list[tuple[Path, int | None]]:
    """Flat folder -> unlabeled; one level of class folders -> labeled (ImageFolder convention)."""
    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    top = images(folder)
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and images(d))
    if top and classes:
        raise EdgequantError(f"{folder}: has images both at the top level and in sub-folders "
                             f"({classes[0].name}/); use one layout")
    if top:
        return [(p, None) for p in top]
    numeric = all(re.fullmatch(r"\d+", d.name) for d in classes)
    ordered = sorted(classes, key=lambda d: int(d.name)) if numeric else classes
    return [(p, int(d.name) if numeric else idx) for idx, d in enumerate(ordered) for p in images(d)]


# --- random:N --------------------------------------------------------------------------------------

class _RandomSource(DataSource):
    """Synthetic inputs for latency only: deterministic per (seed, sample index)."""

    def __init__(self, spec: str, n: int, inputs: Sequence[TensorSpec], seed: int) -> None:
        notes: list[str] = []
        symbols: dict[str, int] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for s in inputs:
            if s.dtype.kind not in "fiub":
                raise EdgequantError(f"{spec}: model input '{s.name}' has type {s.dtype}, which edgequant cannot feed")
            dims = []
            for axis, d in enumerate(s.shape):
                if not _is_dynamic(d):
                    dims.append(int(d))
                    continue
                key = _symbol(d) or f"{s.name}:{axis}"
                if key not in symbols:
                    symbols[key] = 1 if axis == 0 else RANDOM_DYNAMIC_DIM
                    notes.append(f"{spec}: dynamic dim {d if isinstance(d, str) and d else '?'} "
                                 f"(input '{s.name}', axis {axis}) set to {symbols[key]}")
                dims.append(symbols[key])
            self._shapes[s.name] = tuple(dims)
        self._seed = seed
        super().__init__(spec, inputs, n, synthetic=True, notes=notes)

    def _samples(self) -> Iterator[Sample]:
        for i in range(self.count or 0):
            rng = np.random.default_rng([self._seed, i])
            yield Sample({s.name: _random_array(rng, s, self._shapes[s.name]) for s in self.inputs},
                         None, f"{self.spec}[{i}]")


def _random_array(rng: np.random.Generator, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if "mask" in spec.name.lower() and spec.dtype.kind in "iub":
        return np.ones(shape, spec.dtype)  # an all-attend mask keeps attention numerically sane
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, RANDOM_INT_HIGH, shape).astype(spec.dtype)


# --- entry point -----------------------------------------------------------------------------------

def open_source(spec: str | Path, inputs: Sequence[TensorSpec], *, preprocess: Preprocess | None = None,
                limit: int | None = None, seed: int = 0) -> DataSource:
    """Open ``spec`` for a model with ``inputs``, validating names, shapes and dtypes now (headers only)."""
    text = str(spec)
    if not inputs:
        raise EdgequantError(f"{text}: the model has no inputs to feed")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EdgequantError(f"{text}: limit must be a positive integer, got {limit!r}")
    if isinstance(spec, str) and (text == "random" or text.startswith("random:")):
        m = re.fullmatch(r"random:(\d+)", text.strip())
        if not m or int(m.group(1)) < 1:
            raise EdgequantError(f"{text}: expected random:N with N >= 1 (e.g. random:100)")
        return _RandomSource(text, min(int(m.group(1)), limit or int(m.group(1))), inputs, seed)
    path = Path(spec).absolute()   # read lazily, maybe after a step changed the working directory
    if not path.exists():
        raise EdgequantError(f"{text}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in ARRAY_SUFFIXES:
            return _with_ignored_preprocess(_StackedSource(path, inputs, limit), preprocess)
        if suffix in IMAGE_SUFFIXES:
            return _ImageSource(text, [(path, None)], inputs, _need_preprocess(text, preprocess), limit)
        raise EdgequantError(f"{text}: unsupported data source (expected .npz, .npy, an image, a folder, or random:N)")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    arrays = [p for p in entries if p.is_file() and p.suffix.lower() in ARRAY_SUFFIXES]
    if arrays:
        if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
            raise EdgequantError(f"{text}: has both array files and images; keep one kind per folder")
        return _with_ignored_preprocess(_ArrayFolderSource(path, arrays, inputs, limit), preprocess)
    images = _image_files(path)
    if images:
        return _ImageSource(text, images, inputs, _need_preprocess(text, preprocess), limit)
    raise EdgequantError(f"{text}: folder has no usable files (.npy, .npz, {', '.join(IMAGE_SUFFIXES)})")


def _need_preprocess(where: str, preprocess: Preprocess | None) -> Preprocess:
    if preprocess is None:
        raise EdgequantError(f"{where}: images need a preprocessing spec (--preprocess size=HxW,... "
                             "or 'preprocess:' in the fleet YAML)")
    return preprocess


def _with_ignored_preprocess(source: DataSource, preprocess: Preprocess | None) -> DataSource:
    if preprocess is not None:
        source.notes += (f"{source.spec}: preprocessing spec ignored (it applies to images only)",)
    return source
