"""Histogram calibration: streaming ranges vs onnxruntime's HistogramCalibrater, and accuracy.

    PYTHONPATH=src .venv/bin/python benchmarks/calib_memory.py images OUT.npz N [--seed 0]
    PYTHONPATH=src .venv/bin/python benchmarks/calib_memory.py ranges MODEL CALIB [--samples 64]
    PYTHONPATH=src .venv/bin/python benchmarks/calib_memory.py accuracy MODEL EVAL QUANTIZED...
    PYTHONPATH=src .venv/bin/python benchmarks/calib_memory.py sensitivity MODEL QDQ CALIB [--samples 16]

``images``: N image-like (1, 3, 224, 224) samples (``bench_data.image``) as OUT.npz, key ``input``,
written one sample at a time. ``ranges``: per tensor of the prepared model (the graph the quantizer sees), the percentile and
entropy ranges of ``edgequant.algorithms.histogram`` against ORT's own calibrator on the same
samples, in units of ORT's histogram bin (percentile: (max|x| - min|x|) / 2048, entropy:
2 max|x| / 128). ORT's calibrator holds every sample's tensors: keep ``--samples`` small.
``accuracy``: each quantized model against FP32 on EVAL, per output: SQNR, cosine around FP32's
mean over the samples, and (vectors) top-1 agreement. ``sensitivity``: tune's per-node analysis of QDQ (peak memory is the point; measure
it from outside, e.g. ``/usr/bin/time -f %M``). Results go to stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def _source(model: Path, spec: str):
    from edgequant.data import open_source
    from edgequant.model import graph_inputs, load_model

    return open_source(spec, graph_inputs(load_model(model)))


class _Limited:
    """The first ``n`` samples of a source, re-iterable."""

    def __init__(self, src, n: int) -> None:
        self.src, self.n = src, n

    def __iter__(self):
        return itertools.islice(iter(self.src), self.n)

    def __len__(self) -> int:
        return self.n


def images(out: Path, n: int, seed: int) -> None:
    import zipfile

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_data import image

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z, \
            z.open("input.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, 3, 224, 224)})
        for _ in range(n):
            f.write(image(rng)[0].astype("<f4").tobytes())


def ranges(model: Path, calib: str, samples: int) -> None:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgequant.algorithms.histogram import ORT_BINS, collect, tensor_range
    from edgequant.data import calibration_reader
    from edgequant.devices import local_cpu
    from edgequant.measure.session import SessionConfig
    from edgequant.qdq.prepare import prepare

    src = _source(model, calib)
    with tempfile.TemporaryDirectory(prefix="calib-memory-") as tmp:
        prepared = prepare(model, Path(tmp), mode="static", per_channel=True).path
        hists, count = collect(prepared, _Limited(src, samples), local_cpu(SessionConfig(graph_optimization="disable")))
        op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))   # what quantize_static calibrates
        for method, ort_method, extra in (("percentile", CalibrationMethod.Percentile, {"percentile": 99.999}),
                                          ("entropy", CalibrationMethod.Entropy, {})):
            calibrator = create_calibrator(prepared, op_types, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=ort_method, extra_options=extra)
            calibrator.collect_data(calibration_reader(src, limit=samples))
            theirs = {t: tuple(map(float, d.range_value)) for t, d in calibrator.compute_data().items()}
            del calibrator
            bins = ORT_BINS[method][0]
            worst, beyond, missing = 0.0, [], sorted(set(theirs) - set(hists))
            for t, (lo, hi) in theirs.items():
                if t not in hists:
                    continue
                h = hists[t]
                ours = tensor_range(h, method, percentile=99.999)
                width = (h.absmax - h.amin) / bins if method == "percentile" else 2 * h.absmax / bins
                diff = max(abs(ours[0] - lo), abs(ours[1] - hi)) / width if width > 0 else 0.0
                worst = max(worst, diff)
                if diff > 1.001:
                    beyond.append(t)
            print(json.dumps({"what": "ranges", "method": method, "samples": count, "tensors_ort": len(theirs),
                              "tensors_missing": missing, "max_diff_in_ort_bins": round(worst, 3),
                              "tensors_beyond_one_bin": beyond}), flush=True)


def accuracy(model: Path, eval_spec: str, quantized: list[Path]) -> None:
    from edgequant.devices import local_cpu

    src = _source(model, eval_spec)
    outs = local_cpu().outputs([model, *quantized], src).outputs
    refs = {k: v.reshape(len(src), -1).astype(np.float64) for k, v in outs[0].items()}
    for path, out in zip(quantized, outs[1:]):
        row = {"what": "accuracy", "model": str(path), "samples": len(src)}
        for name, ref in refs.items():
            got = out[name].reshape(len(src), -1).astype(np.float64)
            # SQNR and cosine around FP32's mean over the samples: a constant part (random-weight
            # CNNs' logits are mostly bias) would otherwise make every model look perfect
            centred_ref, centred_got = ref - ref.mean(axis=0), got - ref.mean(axis=0)
            cos = np.sum(centred_ref * centred_got, axis=1) / (
                np.linalg.norm(centred_ref, axis=1) * np.linalg.norm(centred_got, axis=1) + 1e-30)
            row[name] = {"sqnr_db": round(float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))), 2),
                         "centred_cosine": round(float(cos.mean()), 4)}
            if ref.shape[1] > 1:
                row[name]["top1_agreement"] = round(float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))), 4)
                row[name]["fp32_distinct_top1"] = int(len(np.unique(ref.argmax(axis=1))))
        print(json.dumps(row), flush=True)


def sensitivity(model: Path, qdq: Path, calib: str, samples: int) -> None:
    from edgequant.sensitivity import analyze_model

    report = analyze_model(model, qdq, _source(model, calib), limit=samples)
    top = report.nodes[0] if report.nodes else None
    print(json.dumps({"what": "sensitivity", "samples": report.samples, "nodes": len(report.nodes),
                      "top": top.name if top else None, "top_drop_db": round(top.drop_db, 2) if top else None}))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("images")
    i.add_argument("out", type=Path)
    i.add_argument("n", type=int)
    i.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("ranges")
    r.add_argument("model", type=Path)
    r.add_argument("calib")
    r.add_argument("--samples", type=int, default=64)
    a = sub.add_parser("accuracy")
    a.add_argument("model", type=Path)
    a.add_argument("eval")
    a.add_argument("quantized", type=Path, nargs="+")
    s = sub.add_parser("sensitivity")
    s.add_argument("model", type=Path)
    s.add_argument("qdq", type=Path)
    s.add_argument("calib")
    s.add_argument("--samples", type=int, default=16)
    args = ap.parse_args(argv)
    if args.cmd == "images":
        images(args.out, args.n, args.seed)
    elif args.cmd == "ranges":
        ranges(args.model, args.calib, args.samples)
    elif args.cmd == "accuracy":
        accuracy(args.model, args.eval, args.quantized)
    else:
        sensitivity(args.model, args.qdq, args.calib, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
