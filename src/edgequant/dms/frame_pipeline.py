"""One camera frame through the DMS chain: face detector -> face landmarks -> iris (both eyes).

``python -m edgequant.dms.frame_pipeline --models-dir DIR [--int8-dir DIR]`` runs the
astronaut frame (or ``--image``) end to end, prints the decisions and the per-frame latency
(median and p95 after warm-up). With ``--int8-dir`` the FP32 and INT8 chains are timed
interleaved, frame by frame, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgequantError
from . import decisions, geometry, stages
from .models import FACE_LANDMARK, IRIS_LANDMARK, MODELS


@dataclass(frozen=True)
class EyeResult:
    """One eye: iris centre in image pixels and the iris position between the corners."""

    iris_centre: tuple[float, float]
    gaze_ratio: float  # 0 = at the corner on the image's left, 1 = on its right


@dataclass(frozen=True)
class FrameResult:
    """What the chain decided on one frame (None fields: no face found)."""

    face_score: float | None
    face_presence: float | None = None
    mesh: np.ndarray | None = None  # (468, 3) image pixels (z in crop pixels)
    ear: float | None = None
    eyes_open: bool | None = None
    eyes: tuple[EyeResult, ...] = ()
    gaze: str | None = None  # "left" / "center" / "right" in image coordinates
    stage_ms: dict[str, float] = field(default_factory=dict)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -100, 100))))


def run_frame(sessions: stages.Sessions, image: np.ndarray) -> FrameResult:
    """Detect the best face, fit the mesh on its crop, then the iris on both eye crops."""
    t0 = time.perf_counter()
    dets = stages.detect(sessions.detector, image)
    t1 = time.perf_counter()
    if not dets:
        return FrameResult(face_score=None, stage_ms={"detector": (t1 - t0) * 1e3})
    roi = geometry.face_roi(dets[0])
    out = stages.run(sessions.face_landmark, stages.model_input(image, roi, FACE_LANDMARK))
    crop_mesh = stages.face_mesh(out)
    mesh = np.concatenate([geometry.to_image(crop_mesh, roi, FACE_LANDMARK.size),
                           crop_mesh[:, 2:]], axis=1)
    t2 = time.perf_counter()
    eyes = []
    for eye_roi in stages.eye_rois(mesh):
        contour, iris = stages.iris_points(
            stages.run(sessions.iris_landmark, stages.model_input(image, eye_roi, IRIS_LANDMARK)))
        ratio = float(decisions.gaze_ratio(contour[None], iris[None])[0])
        centre = geometry.to_image(iris[:1], eye_roi, IRIS_LANDMARK.size)[0]
        # a mirrored crop reads right-to-left in the image
        eyes.append(EyeResult((float(centre[0]), float(centre[1])),
                              1.0 - ratio if eye_roi.flip else ratio))
    t3 = time.perf_counter()
    ear = float((decisions.eye_aspect_ratio(crop_mesh[None], decisions.EAR_EYE_A)[0]
                 + decisions.eye_aspect_ratio(crop_mesh[None], decisions.EAR_EYE_B)[0]) / 2)
    gaze = int(decisions.gaze_direction(np.mean([e.gaze_ratio for e in eyes])))
    return FrameResult(
        face_score=dets[0].score, face_presence=_sigmoid(float(out["conv2d_31"].ravel()[0])),
        mesh=mesh, ear=ear, eyes_open=ear >= decisions.EAR_CLOSED_BELOW, eyes=tuple(eyes),
        gaze=decisions.GAZE_LABELS[gaze],
        stage_ms={"detector": (t1 - t0) * 1e3, "face_landmark": (t2 - t1) * 1e3,
                  "iris_x2": (t3 - t2) * 1e3})


def model_paths(folder: Path) -> tuple[Path, Path, Path]:
    """The three models in ``folder`` (or its ``models/``): ``<name>.onnx``, else one ``<name>*.onnx``."""
    folder = Path(folder)
    if not (folder / MODELS[0].onnx_name).is_file() and (folder / "models").is_dir():
        folder = folder / "models"
    found = []
    for spec in MODELS:
        exact = folder / spec.onnx_name
        hits = [exact] if exact.is_file() else sorted(folder.glob(f"{spec.name}*.onnx"))
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)} candidate"
            raise EdgequantError(f"{folder}: {what} model file for {spec.name} "
                                 f"(want {spec.onnx_name} or one {spec.name}*.onnx)")
        found.append(hits[0])
    return found[0], found[1], found[2]


def process_frame(detector: str | Path, face_landmark: str | Path, iris_landmark: str | Path,
                  image: np.ndarray, threads: int = 1) -> FrameResult:
    """Given three model paths, run one frame (any uint8/float image) end to end."""
    sessions = stages.load_sessions(str(detector), str(face_landmark), str(iris_landmark), threads)
    return run_frame(sessions, stages.to_rgb01(image))


@dataclass(frozen=True)
class LatencyStats:
    """Per-frame wall time of the whole chain after warm-up, in milliseconds."""

    runs: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    stage_median_ms: dict[str, float]


def time_frames(variants: dict[str, stages.Sessions], image: np.ndarray, warmup: int = 10,
                runs: int = 100) -> dict[str, LatencyStats]:
    """Time each chain on the same frame, interleaving variants run by run (order rotates)."""
    img = stages.to_rgb01(image)
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            run_frame(variants[name], img)
    totals: dict[str, list[float]] = {n: [] for n in names}
    stage: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            res = run_frame(variants[name], img)
            totals[name].append((time.perf_counter() - t0) * 1e3)
            stage[name].append(res.stage_ms)
    out = {}
    for name in names:
        t = np.asarray(totals[name])
        keys = stage[name][0].keys()
        out[name] = LatencyStats(runs, float(np.median(t)), float(np.percentile(t, 95)),
                                 float(t.mean()),
                                 {k: float(np.median([s[k] for s in stage[name]])) for k in keys})
    return out


def _describe(name: str, res: FrameResult, stats: LatencyStats) -> str:
    stages_txt = "  ".join(f"{k} {v:.2f}" for k, v in stats.stage_median_ms.items())
    if res.face_score is None:
        return f"{name:5s} no face found | median {stats.median_ms:.2f} ms  p95 {stats.p95_ms:.2f} ms"
    return (f"{name:5s} face {res.face_score:.3f}  presence {res.face_presence:.3f}  "
            f"EAR {res.ear:.3f} ({'open' if res.eyes_open else 'closed'})  gaze {res.gaze} "
            f"(ratio {np.mean([e.gaze_ratio for e in res.eyes]):.3f}) | per frame median "
            f"{stats.median_ms:.2f} ms  p95 {stats.p95_ms:.2f} ms  [{stages_txt}]")


def recommended_paths(fleet_dir: Path, fp32_paths: tuple[Path, Path, Path]) -> tuple[Path, Path, Path]:
    """Each FP32 model's recommended variant from an ``edgequant fleet`` output folder."""
    import json

    chosen: dict[str, Path] = {}
    for rep in sorted(Path(fleet_dir).glob("*/report.json")):
        report = json.loads(rep.read_text())
        if report.get("device", {}).get("kind", "cpu") != "cpu":
            continue  # a model verified for an NPU or an emulated board is not this CPU's chain
        by_name = {v["name"]: v for v in report["variants"]}
        rec = by_name.get(report["recommended"])
        if rec is not None:
            path = Path(rec["path"])
            if not path.is_file() and (rep.parent / path.name).is_file():
                path = rep.parent / path.name  # reports store paths relative to where fleet ran
            chosen[Path(report["model"]["path"]).name] = path
    missing = [p.name for p in fp32_paths if p.name not in chosen]
    if missing:
        raise EdgequantError(f"{fleet_dir}: no fleet report for {', '.join(missing)}")
    return tuple(chosen[p.name] for p in fp32_paths)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgequant.dms.frame_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=Path(".cache/dms/models"),
                   help="folder with the three FP32 .onnx models")
    p.add_argument("--int8-dir", type=Path, help="folder with the INT8 models to compare")
    p.add_argument("--fleet-dir", type=Path,
                   help="compare against the models each `edgequant fleet` report recommends")
    p.add_argument("--image", type=Path, help="frame to run (default: skimage astronaut)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0 = ORT picks)")
    args = p.parse_args(argv)
    try:
        if args.image is not None:
            from PIL import Image, UnidentifiedImageError
            try:
                image = np.asarray(Image.open(args.image).convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise EdgequantError(f"{args.image}: cannot read the image: {exc}") from None
        else:
            from skimage import data
            image = data.astronaut()
        image = stages.to_rgb01(image)
        variants = {"fp32": stages.load_sessions(*map(str, model_paths(args.models_dir)),
                                                 threads=args.threads)}
        if args.int8_dir is not None:
            variants["int8"] = stages.load_sessions(*map(str, model_paths(args.int8_dir)),
                                                    threads=args.threads)
        elif args.fleet_dir is not None:
            fp32 = model_paths(args.models_dir)
            rec = recommended_paths(args.fleet_dir, fp32)
            print("recommended chain: " + ", ".join(
                f"{a.name} -> {'fp32 (unchanged)' if a.resolve() == b.resolve() else b.name}" for a, b in zip(fp32, rec)))
            if any(a.resolve() != b.resolve() for a, b in zip(fp32, rec)):
                variants["rec"] = stages.load_sessions(*map(str, rec), threads=args.threads)
        results = {n: run_frame(s, image) for n, s in variants.items()}
        stats = time_frames(variants, image, args.warmup, args.runs)
    except EdgequantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # onnxruntime raises its own types for unreadable models
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 1
    print(f"frame {image.shape[1]}x{image.shape[0]}, {args.threads} thread(s), "
          f"{args.warmup} warm-up + {args.runs} timed frames per variant")
    for name in variants:
        print(_describe(name, results[name], stats[name]))
    other = next((n for n in ("int8", "rec") if n in results), None)  # rec: the fleet's recommended chain
    if other and results[other].mesh is not None and results["fp32"].mesh is not None:
        shift = np.linalg.norm(results[other].mesh[:, :2] - results["fp32"].mesh[:, :2], axis=1)
        iris = [np.hypot(a.iris_centre[0] - b.iris_centre[0], a.iris_centre[1] - b.iris_centre[1])
                for a, b in zip(results[other].eyes, results["fp32"].eyes, strict=True)]
        print(f"{other} vs fp32: speedup {stats['fp32'].median_ms / stats[other].median_ms:.2f}x  "
              f"mesh shift mean {shift.mean():.2f} px max {shift.max():.2f} px  "
              f"iris centre shift max {max(iris):.2f} px (image pixels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
