"""Task metrics: the built-in ``top1`` and user metrics loaded from ``module:function``.

A metric has the signature::

    fn(outputs: dict[str, np.ndarray], labels: np.ndarray | None,
       reference: dict[str, np.ndarray] | None) -> MetricResult | tuple[float, bool]

``outputs`` (and ``reference``, the FP32 model's outputs when ``--reference`` is given) map each
output name to that output stacked over samples along a new first axis (``outputs[name][i]`` is
run ``i``'s output; see :mod:`edgequant.measure.fidelity`). ``labels`` is the data's ``labels``
stacked the same way, or None. Return a :class:`~edgequant.metrics.MetricResult`, or a
``(value, higher_is_better)`` tuple that edgequant wraps for you.

Plug one in by naming it ``module:function`` (the module must be importable, e.g. on
PYTHONPATH or in the current folder) or ``path/to/file.py:function``. Example, the mean pixel
error of a face-landmark model whose output ``landmarks`` holds normalized (x, y) pairs::

    # dms_metrics.py
    import numpy as np

    def landmark_px_error(outputs, labels, reference):
        pred = outputs["landmarks"].reshape(len(outputs["landmarks"]), -1, 2) * 112.0
        target = (labels if labels is not None else reference["landmarks"]).reshape(pred.shape)
        if labels is None:
            target = target * 112.0          # no labels: error against the FP32 model
        err = np.linalg.norm(pred - target, axis=-1).mean()
        return float(err), False             # pixels; lower is better

    $ edgequant eval dms_int8.onnx --data faces.npz --reference dms_fp32.onnx \
          --metric dms_metrics:landmark_px_error
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgequantError
from ..metrics import MetricResult
from .fidelity import class_scores

Outputs = Mapping[str, np.ndarray]
Metric = Callable[[Outputs, "np.ndarray | None", "Outputs | None"], MetricResult]


def _class_ids(labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    """Integer class ids from ``[N]``/``[N, 1]``/``[N, 1, 1]`` ids or one-hot ``[N, C]``/``[N, 1, C]``."""
    lab = np.asarray(labels)
    if lab.shape[0] != n:
        raise EdgequantError(f"top1: {lab.shape[0]} labels for {n} samples")
    flat = lab.reshape(n, -1)
    if flat.shape[1] == 1:
        ids = flat[:, 0]
        if not np.all(np.isfinite(ids.astype(np.float64))) or np.any(ids != np.round(ids)):
            raise EdgequantError("top1: labels must be integer class ids or one-hot vectors")
        return ids.astype(np.int64)
    if flat.shape[1] == classes:
        return np.argmax(flat, axis=1)
    raise EdgequantError(f"top1: labels of shape {lab.shape} are neither class ids nor one-hot over {classes} classes")


def _hits(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    best = np.argsort(-scores, axis=1)[:, :min(k, scores.shape[1])]
    return np.any(best == ids[:, None], axis=1)


def _paired(hits: np.ndarray, ref_hits: np.ndarray) -> dict[str, int]:
    """Per-sample outcomes against FP32's on the same samples (the budget's paired interval)."""
    return {"both": int(np.sum(hits & ref_hits)), "lost": int(np.sum(ref_hits & ~hits)),
            "gained": int(np.sum(hits & ~ref_hits)), "neither": int(np.sum(~hits & ~ref_hits))}


def _topk(k: int, outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Top-k accuracy of the first classifier-like output (``[N, C]`` or ``[N, 1, C]``); with the
    FP32 ``reference``, also the paired outcome counts (``details["paired"]``)."""
    name_k = f"top{k}"
    if labels is None:
        raise EdgequantError(f"{name_k} needs labels; the data has none (give --reference for fidelity, "
                             "or a --metric that works without labels)")
    for name, arr in outputs.items():
        scores = class_scores(np.asarray(arr))
        if scores is not None:
            ids = _class_ids(labels, scores.shape[0], scores.shape[1])
            hits = _hits(scores, ids, k)
            correct = int(np.sum(hits))
            details = {"output": name, "correct": correct, "count": int(scores.shape[0])}
            ref_scores = class_scores(np.asarray(reference[name])) if reference and name in reference else None
            if ref_scores is not None and ref_scores.shape == scores.shape:
                details["paired"] = _paired(hits, _hits(ref_scores, ids, k))
            return MetricResult(name_k, correct / scores.shape[0], True, details)
    raise EdgequantError(f"{name_k}: no classifier-like output ([N, C] or [N, 1, C] scores); "
                         "use --metric module:function for this model")


def top1(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Top-1 accuracy of the first classifier-like output (``[N, C]`` or ``[N, 1, C]``)."""
    return _topk(1, outputs, labels, reference)


def top5(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
    """Top-5 accuracy: the label is among the five highest scores."""
    return _topk(5, outputs, labels, reference)


def ctc_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[..., T, C]`` per-position scores: arg-max per position, repeats
    collapsed, the blank index dropped; one token tuple per sequence (leading axes flattened)."""
    arr = np.asarray(scores)
    ids = np.argmax(arr.reshape(-1, arr.shape[-2], arr.shape[-1]), axis=-1)
    out = []
    for row in ids:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(t) for t in row[keep] if t != blank))
    return out


def _edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _label_sequences(labels: np.ndarray, n: int) -> list[tuple[int, ...]]:
    """``[N, L]`` integer token ids, padded with negative values."""
    lab = np.asarray(labels).reshape(len(labels), -1)
    if lab.shape[0] != n:
        raise EdgequantError(f"ctc_agreement: {lab.shape[0]} label sequences for {n} decoded sequences")
    return [tuple(int(t) for t in row if t >= 0) for row in lab]


def ctc_agreement(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None, *,
                  blank: int = 0) -> MetricResult:
    """Share of sequences whose greedy CTC decoding equals the label (``[N, L]`` token ids padded
    with -1) or, without labels, the FP32 model's decoding; details carry the character error rate.

    For recognizers (OCR, speech) whose output is ``[N, T, C]`` per-position scores: their cosine
    says little (0.96 went with 37% to 87% of lines decoded alike), the decoded text is the task."""
    name = next((k for k, v in outputs.items() if np.asarray(v).ndim >= 3), None)
    if name is None:
        raise EdgequantError("ctc_agreement: no output with per-position scores ([N, T, C])")
    got = ctc_decode(outputs[name], blank)
    if labels is not None:
        want, against = _label_sequences(labels, len(got)), "labels"
    elif reference is not None and name in reference:
        want, against = ctc_decode(reference[name], blank), "fp32"
    else:
        raise EdgequantError("ctc_agreement needs labels or an FP32 reference (--reference)")
    same = sum(g == w for g, w in zip(got, want))
    chars = sum(len(w) for w in want)
    errors = sum(_edit_distance(g, w) for g, w in zip(got, want))
    return MetricResult("ctc_agreement", same / len(got), True,
                        {"output": name, "against": against, "blank": blank, "sequences": len(got),
                         "equal": same, "char_error_rate": errors / max(chars, 1)})


BUILTIN: dict[str, Metric] = {"top1": top1, "top5": top5, "ctc_agreement": ctc_agreement}


def _builtin_with_options(spec: str) -> Metric | None:
    """``ctc_agreement:blank=N``: a built-in with its one option."""
    name, _, option = spec.partition(":")
    if name != "ctc_agreement" or not option:
        return None
    key, _, value = option.partition("=")
    if key.strip() != "blank" or not value.strip().isdigit():
        raise EdgequantError(f"metric {spec!r}: expected ctc_agreement or ctc_agreement:blank=N (N >= 0)")
    blank = int(value)

    def metric(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
        return ctc_agreement(outputs, labels, reference, blank=blank)

    metric.__name__ = "ctc_agreement"
    return metric


def _import_target(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise EdgequantError(f"metric {spec!r}: expected a built-in name ({', '.join(BUILTIN)}) "
                             "or module:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise EdgequantError(f"metric {spec!r}: {path}: no such file")
        mod_name = f"edgequant_user_metric_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise EdgequantError(f"metric {spec!r}: {path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code
            raise EdgequantError(f"metric {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        added = "" not in sys.path and "." not in sys.path
        if added:  # like `python -m`, let a metric module in the current folder be found
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise EdgequantError(f"metric {spec!r}: cannot import module {module_name!r} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - user code
            raise EdgequantError(f"metric {spec!r}: importing {module_name!r} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
        finally:
            if added:
                sys.path.remove("")
    fn = getattr(module, attr, None)
    if fn is None:
        import difflib

        near = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(f'{module_name}:{n}' for n in near)}?" if near else ""
        raise EdgequantError(f"metric {spec!r}: module {module_name!r} has no attribute {attr!r}{hint}")
    if not callable(fn):
        raise EdgequantError(f"metric {spec!r}: {attr!r} is not callable")
    return fn


def _wrap(fn: Callable[..., Any], name: str) -> Metric:
    """Call a user metric; accept MetricResult or (value, higher_is_better); errors -> one line."""

    def metric(outputs: Outputs, labels: np.ndarray | None, reference: Outputs | None = None) -> MetricResult:
        try:
            result = fn(dict(outputs), labels, None if reference is None else dict(reference))
        except EdgequantError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise EdgequantError(f"metric {name!r} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(result, MetricResult):
            return result
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], (bool, np.bool_)):
            try:
                value = float(result[0])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isnan(value):
                return MetricResult(name, value, bool(result[1]))
        raise EdgequantError(f"metric {name!r} returned {type(result).__name__} {str(result)[:80]!r}; "
                             "expected MetricResult or (value: float, higher_is_better: bool)")

    metric.__name__ = name
    return metric


def load_metric(spec: str) -> Metric:
    """A built-in metric by name, or ``module:function`` / ``file.py:function`` from user code."""
    spec = spec.strip()
    if spec in BUILTIN:
        return BUILTIN[spec]
    with_options = _builtin_with_options(spec)
    if with_options is not None:
        return with_options
    if ":" not in spec:
        import difflib

        near = difflib.get_close_matches(spec, list(BUILTIN), n=2, cutoff=0.6)
        raise EdgequantError(f"metric {spec!r}: not a built-in ({', '.join(BUILTIN)})"
                             + (f"; did you mean {', '.join(near)}?" if near else "; a user metric is module:function"))
    fn = _import_target(spec)
    return _wrap(fn, spec.rpartition(":")[2])


def choose_metric(spec: str | None, *, has_labels: bool, synthetic: bool) -> Metric | None:
    """The one rule for which task metric a run uses.

    Synthetic (random) inputs: none, since task accuracy on noise means nothing. Otherwise the
    metric the user named, else ``top1`` when the data has labels, else none (the budget then
    judges agreement with FP32).
    """
    if synthetic:
        return None
    if spec:
        return load_metric(spec)
    return BUILTIN["top1"] if has_labels else None
