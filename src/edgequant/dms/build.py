"""Build the DMS model cache: mediapipe wheel -> .tflite -> ONNX -> verified -> datasets.

``python -m edgequant.dms.build --out DIR`` (default ``.cache/dms``). Idempotent: each step
is skipped when its outputs exist and their sha256 match the manifests; every file is
written to a temporary name and renamed. Layout::

    DIR/wheel/mediapipe-0.10.21-*.whl         download cache (never commit)
    DIR/tflite/<model>.tflite                 read from the wheel, checked against RECORD
    DIR/models/<model>.onnx, manifest.json    converted models, hashes, max diff vs .tflite
    DIR/data/<model>.{calibration,evaluation}.npz, manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from ..errors import EdgequantError
from ..fsutil import atomic_path, write_text_atomic
from ..model import sha256_file
from . import convert, datasets, metrics, stages, verify, wheel
from .models import MEDIAPIPE_VERSION, MODELS, ModelSpec

MODELS_SCHEMA = "edgequant.dms.models/1"
DATA_SCHEMA = "edgequant.dms.data/1"
DEFAULT_OUT = Path(".cache/dms")


def sha256(path: Path) -> str:
    return sha256_file(path)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load_json(path: Path) -> dict:
    """A previous manifest, or {} when absent or unreadable (the build then redoes the work)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: dict) -> None:
    """Write atomically, and not at all when the file already holds exactly this."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(path, text)


def _io_specs(model: onnx.ModelProto, spec: ModelSpec) -> dict:
    def dims(vi: onnx.ValueInfoProto) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in vi.type.tensor_type.shape.dim]

    def dtype(vi: onnx.ValueInfoProto) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name

    return {"inputs": [{"name": i.name, "shape": dims(i), "dtype": dtype(i), "layout": "NCHW",
                        "value_range": list(spec.value_range)} for i in model.graph.input],
            "outputs": [{"name": o.name, "shape": dims(o), "dtype": dtype(o)}
                        for o in model.graph.output]}


def _log(msg: str) -> None:
    print(f"[dms.build] {msg}", file=sys.stderr, flush=True)


def build_models(out: Path, force: bool = False) -> dict:
    """Steps 1-2: wheel, .tflite members, ONNX conversion. Returns the models manifest."""
    whl = wheel.ensure_wheel(out / "wheel")
    _log(f"wheel {whl.name}")
    manifest_path = out / "models" / "manifest.json"
    old = {} if force else _load_json(manifest_path).get("models", {})
    t2o = _version("tflite2onnx")
    if t2o is None:
        raise EdgequantError("tflite2onnx is not installed: pip install tflite2onnx==0.4.1")
    converter = f"tflite2onnx {t2o}, edgequant.dms.convert v{convert.RECIPE_VERSION}"
    entries = {}
    for spec in MODELS:
        tfl = out / "tflite" / f"{spec.name}.tflite"
        tfl_sha = wheel.extract_member(whl, spec.member, tfl)
        onnx_path = out / "models" / spec.onnx_name
        prev = old.get(spec.name, {})
        fresh = (onnx_path.is_file() and prev.get("tflite_sha256") == tfl_sha
                 and prev.get("converter") == converter
                 and prev.get("sha256") == sha256(onnx_path))
        if fresh:
            entries[spec.name] = prev
            continue
        _log(f"convert {spec.name}")
        model = convert.tflite_to_onnx(tfl, onnx_path)
        entries[spec.name] = {
            "file": spec.onnx_name, "sha256": sha256(onnx_path),
            "size_bytes": onnx_path.stat().st_size,
            "source": {"wheel": whl.name, "member": spec.member},
            "tflite_sha256": tfl_sha, "converter": converter,
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            **_io_specs(model, spec), "metric": f"edgequant.dms.metrics:{spec.metric}",
            "verification": {"status": "pending"}}
    manifest = {"schema": MODELS_SCHEMA,
                "source": {"package": "mediapipe", "version": MEDIAPIPE_VERSION,
                           "wheel": whl.name, "wheel_sha256": sha256(whl)},
                "layout_note": "tflite2onnx turns the NHWC .tflite graphs into NCHW ONNX "
                               "graphs; batch is static 1",
                "models": entries}
    _write_json(manifest_path, manifest)
    return manifest


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"file": path.name, "sha256": sha256(path),
            "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()},
            "samples": int(next(iter(arrays.values())).shape[0])}


def _data_fresh(data_dir: Path, old: dict, model_shas: dict) -> bool:
    if old.get("version") != datasets.DATASET_VERSION or old.get("built_with") != model_shas:
        return False
    for per_model in old.get("sets", {}).values():
        for entry in per_model.values():
            p = data_dir / entry["file"]
            if not p.is_file() or sha256(p) != entry["sha256"]:
                return False
    return len(old.get("sets", {})) == len(MODELS)


def build_datasets(out: Path, models: dict, force: bool = False) -> dict:
    """Step 3: calibration/evaluation .npz per model (needs the FP32 ONNX models)."""
    data_dir = out / "data"
    manifest_path = data_dir / "manifest.json"
    model_shas = {k: v["sha256"] for k, v in models["models"].items()}
    old = {} if force else _load_json(manifest_path)
    if _data_fresh(data_dir, old, model_shas):
        return old
    _log("build datasets")
    paths = {s.name: out / "models" / s.onnx_name for s in MODELS}
    sess = stages.load_sessions(*(paths[s.name] for s in MODELS))
    names = {s.name: models["models"][s.name]["inputs"][0]["name"] for s in MODELS}
    images, labels = datasets.lfw()
    frame = datasets.astronaut()
    det = datasets.detector_sets(images, labels, frame)
    lm = datasets.landmark_sets(sess, datasets.face_sources(sess.detector, images, labels, frame))
    det_name, face_name, iris_name = (s.name for s in MODELS)
    sets: dict[str, dict] = {det_name: {}, face_name: {}, iris_name: {}}
    for split in datasets.SPLITS:
        x, y = det[split]
        arrays = {names[det_name]: x, **({"labels": y} if split == "evaluation" else {})}
        sets[det_name][split] = _save_npz(data_dir / f"{det_name}.{split}.npz", arrays)
        sets[face_name][split] = _save_npz(data_dir / f"{face_name}.{split}.npz",
                                           {names[face_name]: lm[split]["face"]})
        sets[iris_name][split] = _save_npz(data_dir / f"{iris_name}.{split}.npz",
                                           {names[iris_name]: lm[split]["eyes"]})
        sets[face_name][split]["dropped_no_face"] = lm[split]["dropped"]
    manifest = {"schema": DATA_SCHEMA, "version": datasets.DATASET_VERSION,
                "built_with": model_shas, "sources": "skimage.data.lfw_subset, skimage.data.astronaut "
                f"(scikit-image {_version('scikit-image')})",
                "recipe": (datasets.__doc__ or "").strip(), "sets": sets,
                "fp32": _fp32_baseline(sess, det["evaluation"], lm["evaluation"])}
    _write_json(manifest_path, manifest)
    return manifest


def _run_all(session, samples: np.ndarray) -> dict[str, np.ndarray]:
    runs = [stages.run(session, s) for s in samples]
    return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}


def _fp32_baseline(sess: stages.Sessions, det_eval: tuple, lm_eval: dict) -> dict:
    """What the FP32 models score on the evaluation sets (reference decisions' spread too)."""
    acc = metrics.detector_accuracy(_run_all(sess.detector, det_eval[0]), det_eval[1], None)
    face = _run_all(sess.face_landmark, lm_eval["face"])
    eyes = metrics.eye_state_agreement(face, None, face)
    iris = _run_all(sess.iris_landmark, lm_eval["eyes"])
    gaze = metrics.gaze_agreement(iris, None, iris)
    return {"detector_accuracy": acc.value, **{f"detector_{k}": v for k, v in acc.details.items()},
            "eyes_open_rate": eyes.details["reference_open_rate"],
            "gaze_counts": gaze.details["reference_counts"]}


def verify_models(out: Path, models: dict, data: dict) -> dict:
    """Step 4: max |ONNX - tflite| on every evaluation sample; recorded in the models manifest."""
    lite = verify.litert_version()
    for spec in MODELS:
        entry = models["models"][spec.name]
        ev = data["sets"][spec.name]["evaluation"]
        done = entry.get("verification", {})
        if done.get("status") == "ok" and done.get("data_sha256") == ev["sha256"]:
            continue
        if lite is None:
            _log(f"verify {spec.name}: skipped (ai-edge-litert is not installed)")
        else:
            _log(f"verify {spec.name} against the .tflite original (ai-edge-litert {lite})")
        with np.load(out / "data" / ev["file"], allow_pickle=False) as z:
            samples = z[entry["inputs"][0]["name"]]
        result = verify.compare(out / "tflite" / f"{spec.name}.tflite",
                                out / "models" / spec.onnx_name, samples)
        entry["verification"] = {**result.to_json(), "runtime": f"ai-edge-litert {lite}",
                                 "data": ev["file"], "data_sha256": ev["sha256"]}
    _write_json(out / "models" / "manifest.json", models)
    return models


def build(out: Path = DEFAULT_OUT, force: bool = False) -> dict:
    """Run every step; return {"models": manifest, "data": manifest}."""
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(out, force)
    data = build_datasets(out, models, force)
    models = verify_models(out, models, data)
    return {"models": models, "data": data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgequant.dms.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache folder (.cache/dms)")
    parser.add_argument("--force", action="store_true", help="rebuild even when outputs are valid")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        result = build(args.out, args.force)
    except EdgequantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for name, m in result["models"]["models"].items():
        v = m["verification"]
        diff = f"max |onnx - tflite| = {v['max_abs_diff']:.3g}" if v["status"] == "ok" \
            else f"verification {v['status']}: {v.get('reason', '')}"
        print(f"{name:28s} opset {m['opset']}  input {m['inputs'][0]['name']} "
              f"{m['inputs'][0]['shape']}  {diff}")
    fp32 = result["data"]["fp32"]
    print(f"FP32 detector accuracy on the lfw evaluation split: {fp32['detector_accuracy']:.3f}")
    print(f"done in {time.perf_counter() - start:.1f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
