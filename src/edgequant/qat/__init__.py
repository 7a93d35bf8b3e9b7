"""Quantization-aware training straight from an ONNX file: no training code, no labels.

Entry point: :func:`train_qat`. It starts from edgequant's own static QDQ model for the target
(the exact QDQ semantics the target runs: types, per-channel axes, zero points, 7-bit weights
where the target uses them), interprets that graph in torch (``interpreter``: weights become
trainable through fake-quant with their fixed scales, activation scales are learned with LSQ),
distils the FP32 model's outputs on the calibration samples (``train``), and writes the trained
values back into the same QDQ graph (``export``), checking that onnxruntime's outputs match the
torch fake-quant model's within one quantization step.

torch is an optional extra (``edgequant[qat]``): nothing outside this package imports it, and this
module imports it only inside :func:`train_qat`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import model as model_io
from ..errors import EdgequantError

SCHEMA = "edgequant.qat/1"
HOLDOUT_FRACTION = 0.2
#: Samples of each output checked in the export round trip (onnxruntime vs torch).
EXPORT_CHECK_SAMPLES = 16


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EdgequantError("edgequant qat needs PyTorch: pip install 'edgequant[qat]'") from None


def _load(spec: str, proto: Any, preprocess: Any, limit: int | None) -> tuple[list[dict], np.ndarray | None]:
    from ..data import open_source

    source = open_source(spec, model_io.graph_inputs(proto), preprocess=preprocess, limit=limit)
    if source.synthetic:
        raise EdgequantError(f"{spec}: qat needs real samples (random data teaches nothing)")
    feeds, labels = [], []
    for s in source:
        feeds.append({k: np.asarray(v) for k, v in s.feeds.items()})
        labels.append(s.label)
    if not feeds:
        raise EdgequantError(f"{spec}: no samples")
    stacked = np.stack([np.asarray(lb) for lb in labels]) if all(lb is not None for lb in labels) else None
    return feeds, stacked


def _fp32_weights(model: Path, config: Any) -> dict[str, np.ndarray]:
    """The prepared FP32 model's initializers (the graph the quantizer saw: rewrites, folded BN)."""
    from onnx import numpy_helper

    from ..qdq.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="edgequant-qat-") as tmp:
        prep = prepare(model, Path(tmp), mode="static", per_channel=config.per_channel, target=config.target)
        proto = model_io.load_model(prep.path, check=False)
        return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _weight_range(config: Any) -> Callable[[int], tuple[int, int]]:
    """ORT's integer range for the target's weights (reduce_range, symmetric), else the type's."""
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    from .fakequant import TYPE_RANGE

    wtype = {"int8": 3, "uint8": 2, "int16": 5, "uint16": 4}[config.weight_type]

    def rng(dtype: int) -> tuple[int, int]:
        if dtype != wtype:
            return TYPE_RANGE[dtype]
        lo, hi = get_qmin_qmax_for_qType(dtype, reduce_range=config.reduce_range, symmetric=config.weight_symmetric)
        return int(lo), int(hi)
    return rng


def output_steps(proto: Any) -> dict[str, float]:
    """Each graph output's quantization step: the scale of the DequantizeLinear producing it."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    steps = {}
    for out in proto.graph.output:
        node = producer.get(out.name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            steps[out.name] = float(np.max(inits[node.input[1]]))
    return steps


def _summary(fid: Any) -> dict:
    return {"cosine": fid.cosine, "sqnr_db": fid.sqnr_db, "max_abs_err": fid.max_abs_err,
            "per_output_sqnr_db": {n: o.sqnr_db for n, o in fid.per_output.items()}}


def train_qat(model: str | Path, out_dir: str | Path, *, calib: str, eval: str | None = None,
              target: str = "auto", per_channel: bool | None = None, epochs: int = 10,
              time_budget_min: float | None = None, metric: str | None = None, preprocess: Any = None,
              calib_limit: int | None = None, eval_limit: int | None = None, lr: float = 1e-2,
              batch_size: int = 8, seed: int = 0, threads: int = 0, force: bool = False,
              progress: Callable[[str], None] | None = None, config: Any = None, **quantize_overrides: Any) -> dict:
    """QAT of ``model``: writes ``out_dir``/model.int8.onnx (trained), model.ptq.onnx (where it
    started) and qat.json (the record this returns). ``config`` (a static QuantizeConfig, e.g. the
    recipe tune found best) replaces the target defaults as the starting point."""
    require_torch()
    import torch

    from ..devices import local_cpu
    from ..fsutil import write_text_atomic
    from ..measure.accuracy import load_metric
    from ..measure.fidelity import compare_outputs
    from ..measure.roles import detect_roles
    from ..measure.session import SessionConfig
    from ..metrics import accuracy_entry
    from ..qmath import sqnr_db
    from ..quantize import make_config, quantize_model
    from .export import export_qdq
    from .interpreter import QDQNet
    from .train import Distiller, TrainConfig, train

    say = progress or (lambda msg: None)
    model, out_dir = Path(model), Path(out_dir)
    proto = model_io.load_model(model)
    final, ptq_path = out_dir / "model.int8.onnx", out_dir / "model.ptq.onnx"
    if final.exists() and not force:
        raise EdgequantError(f"{final}: already exists; choose another -o folder or pass --force")
    if epochs < 1:
        raise EdgequantError(f"epochs must be >= 1, got {epochs}")
    metric_fn = load_metric(metric) if metric else None
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    say(f"reading calibration samples from {calib}")
    feeds, _ = _load(calib, proto, preprocess, calib_limit)
    eval_feeds, eval_labels = _load(eval, proto, preprocess, eval_limit) if eval else (None, None)
    if config is None:
        config = make_config("static", target, per_channel=per_channel, calib_limit=calib_limit, **quantize_overrides)
    elif config.mode != "static" or config.equalize or config.smooth_quant:
        raise EdgequantError("qat starts from a static recipe whose FP32 weights are the prepared model's "
                             "(no equalization or SmoothQuant)")
    say(f"static PTQ for {config.target} ({'per-channel' if config.per_channel else 'per-tensor'} weights)")
    from ..data import open_source

    source = open_source(calib, model_io.graph_inputs(proto), preprocess=preprocess, limit=calib_limit)
    ptq = quantize_model(model, ptq_path, config, source)
    qdq = model_io.load_model(ptq_path, check=False)

    cpu = local_cpu(SessionConfig(intra_op_threads=threads))
    say(f"FP32 outputs of {len(feeds)} calibration samples (onnxruntime)")
    teacher = cpu.outputs([str(model)], feeds).outputs[0]
    roles = detect_roles(proto)
    scores = [n for n, r in roles.items() if r.role == "detection" and teacher[n].shape[-1] == 1]

    if threads:
        torch.set_num_threads(threads)
    net = QDQNet(qdq, _fp32_weights(model, config), _weight_range(config), where=str(model))
    d = Distiller(net, feeds, teacher, scores)
    order = np.random.default_rng(seed).permutation(len(feeds)).tolist()
    n_hold = round(len(feeds) * HOLDOUT_FRACTION) if len(feeds) >= 5 else 0
    holdout, train_idx = sorted(order[:n_hold]), sorted(order[n_hold:])

    on_epoch = None
    ref_eval = None
    if eval_feeds is not None:
        ref_eval = cpu.outputs([str(model)], eval_feeds).outputs[0]
        use_metric = metric_fn is not None

        def on_epoch(_net: Any) -> dict:
            got = d.outputs(eval_feeds)
            if use_metric:
                res = metric_fn(got, eval_labels, ref_eval)
                return {"metric": float(res.value), "metric_name": res.name}
            return {"metric": min(sqnr_db(ref_eval[n], got[n]) for n in ref_eval), "metric_name": "eval SQNR dB"}

    cfg = TrainConfig(epochs=epochs, time_budget_s=None if time_budget_min is None else time_budget_min * 60,
                      lr=lr, batch_size=batch_size, seed=seed)
    result = train(d, train_idx, holdout, cfg, progress=say, on_epoch=on_epoch)

    say("exporting the trained QDQ model")
    trained = export_qdq(net, qdq)
    model_io.save_model(trained, final, inputs=(model,))

    # the export round trip: onnxruntime on the written file vs the torch fake-quant model
    check = [feeds[i] for i in (holdout or train_idx)[:EXPORT_CHECK_SAMPLES]]
    ort_out = cpu.outputs([str(final)], check).outputs[0]
    torch_out = d.outputs(check)
    steps = output_steps(trained)
    export_check = {n: {"max_abs_diff": float(np.max(np.abs(ort_out[n] - torch_out[n]))),
                        "step": steps.get(n)} for n in ort_out}
    for n, v in export_check.items():
        v["max_steps"] = v["max_abs_diff"] / v["step"] if v["step"] else None
        # float accumulation order (onnxruntime vs torch) can flip a value lying on a rounding
        # boundary by one step; in a deep net such a flip can grow downstream: say how often
        v["within_one_step"] = (float(np.mean(np.abs(ort_out[n] - torch_out[n]) <= v["step"] * 1.0001))
                                if v["step"] else None)

    say("fidelity before/after against FP32 (onnxruntime)")
    judge_feeds = eval_feeds if eval_feeds is not None else [feeds[i] for i in holdout] or feeds
    labels = eval_labels if eval_feeds is not None else None
    got = cpu.outputs([str(model), str(ptq_path), str(final)], judge_feeds)
    ref, before, after = got.outputs
    role_names = {n: r.role for n, r in roles.items()}
    record: dict[str, Any] = {
        "schema": SCHEMA, "model": str(model), "target": config.target, "per_channel": config.per_channel,
        "reduce_range": config.reduce_range, "activation_type": config.activation_type,
        "weight_type": config.weight_type, "calib": calib, "calib_samples": len(feeds),
        "train_samples": len(train_idx), "holdout_samples": len(holdout),
        "judged_on": eval or f"{calib} (held-out part)", "judged_samples": got.count,
        "epochs": epochs, "epochs_run": result.epochs_run, "steps": result.steps, "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by, "train_time_s": result.time_s,
        "total_time_s": round(time.perf_counter() - t0, 2), "lr": lr, "batch_size": batch_size,
        "loss_curve": result.curve, "export_check": export_check,
        "fidelity": {"ptq": _summary(compare_outputs(ref, before, role_names)),
                     "qat": _summary(compare_outputs(ref, after, role_names))},
        "accuracy": None, "ptq_notes": list(ptq.notes), "files": {"qat": str(final), "ptq": str(ptq_path)},
    }
    if metric_fn is not None:
        ref_res = metric_fn(ref, labels, ref)
        record["accuracy"] = {"ptq": accuracy_entry(metric_fn(before, labels, ref), ref_res),
                              "qat": accuracy_entry(metric_fn(after, labels, ref), ref_res)}
    write_text_atomic(out_dir / "qat.json", json.dumps(record, indent=2, default=float) + "\n")
    return record
