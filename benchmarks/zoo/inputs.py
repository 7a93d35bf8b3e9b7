"""Real inputs made offline: scikit-image's bundled photos, sentences from Python's own
docstrings, text lines rendered with Pillow's bundled font, speech synthesized by espeak-ng
(Debian package). Everything is deterministic for a given set of package versions."""

from __future__ import annotations

import importlib
import io
import re
import shutil
import subprocess
import warnings
import wave

import numpy as np

from edgequant.errors import EdgequantError

# scikit-image images that ship inside its wheel (no pooch download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "colorwheel", "camera", "coins", "horse", "clock", "moon", "brick", "grass",
          "gravel", "page", "text", "cell")
_DOC_MODULES = ("json", "os", "collections", "functools", "itertools", "pathlib", "re", "string",
                "textwrap", "argparse", "logging", "subprocess", "threading", "typing", "zipfile",
                "csv", "random", "statistics", "datetime", "decimal", "heapq", "shutil", "tempfile",
                "unittest", "inspect", "dataclasses", "contextlib", "abc", "enum", "fractions")


def photos() -> list[np.ndarray]:
    """scikit-image's bundled photos as uint8 RGB arrays (grey images repeated to 3 channels)."""
    import skimage.data as data

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-9))).astype(np.uint8)
        out.append(img)
    return out


def people() -> list[np.ndarray]:
    """scikit-image's photos of a person (the astronaut, the cameraman), and each mirrored."""
    import skimage.data as data

    out = []
    for name in ("astronaut", "camera"):
        img = np.asarray(getattr(data, name)())
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        out += [img, img[:, ::-1].copy()]
    return out


def faces() -> np.ndarray:
    """The 200 lfw_subset faces (25x25 grey, float in [0, 1]) as uint8 RGB."""
    import skimage.data as data

    f = (np.asarray(data.lfw_subset()) * 255).clip(0, 255).astype(np.uint8)
    return np.repeat(f[..., None], 3, axis=3)


def crops(images: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random square crops (side 35-100 % of the short edge) resized to ``size``: uint8 NHWC."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(patch)
    return out


def sentences(n: int | None = None, min_words: int = 5, max_words: int = 30) -> list[str]:
    """Sentences from standard-library docstrings, in a fixed order, de-duplicated."""
    seen, out = set(), []
    for mod_name in _DOC_MODULES:
        mod = importlib.import_module(mod_name)
        with warnings.catch_warnings():     # typing.io / typing.re warn when touched: only their text is read
            warnings.simplefilter("ignore", DeprecationWarning)
            docs = [mod.__doc__ or ""] + [getattr(getattr(mod, a), "__doc__", "") or ""
                                         for a in sorted(dir(mod)) if not a.startswith("_")]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            text = " ".join(doc.split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                words = s.split()
                if not (min_words <= len(words) <= max_words) or not s.isascii():
                    continue
                if any(c in s for c in "<>{}[]|\\=_*`'") or s in seen or not s[0].isupper():
                    continue
                seen.add(s)
                out.append(s)
    if n is not None and len(out) < n:
        raise EdgequantError(f"only {len(out)} docstring sentences, {n} wanted")
    return out[:n] if n is not None else out


def render_line(text: str, height: int, width: int, size: int = 28, pad: int = 4) -> np.ndarray:
    """One dark text line on a light background, Pillow's bundled font: uint8 RGB [height, width]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    box = font.getbbox(text)
    img = Image.new("RGB", (box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), (245, 243, 236))
    ImageDraw.Draw(img).text((pad - box[0], pad - box[1]), text, font=font, fill=(20, 20, 30))
    scale = height / img.height
    new_w = min(width, max(8, int(img.width * scale)))
    img = img.resize((new_w, height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (245, 243, 236))
    canvas.paste(img, (0, 0))
    return np.asarray(canvas)


def render_page(lines: list[str], side: int, size: int, seed: int) -> np.ndarray:
    """A ``side`` x ``side`` page of text lines at random offsets over a light background."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(2, size))
    for line in lines:
        if y + size >= side:
            break
        draw.text((int(rng.integers(2, side // 4)), y), line, font=font,
                  fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        y += int(size * rng.uniform(1.3, 2.2))
    return np.asarray(img)


VOICES = ("en", "en-us", "en+f3", "en+m3", "en-gb-x-rp", "en+f4")


def speak(text: str, voice: str, speed: int, rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng, resampled to ``rate`` Hz: float32 in [-1, 1]."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EdgequantError("espeak-ng is not installed (apt-get install espeak-ng)")
    proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise EdgequantError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        src_rate, frames = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    g = np.gcd(rate, src_rate)
    return resample_poly(x, rate // g, src_rate // g).astype(np.float32)
