"""Image preprocessing spec and the image loader that applies it.

A model's accuracy depends on being fed exactly what it was trained on, so every step is an
explicit field: size, resize mode, color order, layout and the normalization
``(pixel * scale - mean) / std`` (mean/std given per output channel, in the output color order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgequantError

RESIZE_MODES = ("stretch", "letterbox", "center_crop")
COLORS = ("rgb", "bgr", "gray")
LAYOUTS = ("nchw", "nhwc")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    ``resize``: ``stretch`` ignores aspect ratio; ``letterbox`` fits the image inside ``size``
    keeping aspect ratio and pads with ``pad`` (0-255, YOLO uses 114); ``center_crop`` scales
    the image to cover ``size / crop_fraction`` and crops the centre (ImageNet: 0.875).
    """

    size: tuple[int, int]  # (height, width)
    resize: str = "stretch"
    color: str = "rgb"
    layout: str = "nchw"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pad: int = 114
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):  # normalize lists/strings to the declared types (idempotent)
            object.__setattr__(self, f.name, _NORMALIZERS[f.name](getattr(self, f.name), "preprocess"))
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.channels):
                allowed = "1 value" if self.channels == 1 else f"1 or {self.channels} values"
                raise EdgequantError(f"preprocess: {key} needs {allowed} for color={self.color}, "
                                     f"got {len(getattr(self, key))}")

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image, without a batch dim."""
        h, w = self.size
        return (self.channels, h, w) if self.layout == "nchw" else (h, w, self.channels)

    def describe(self) -> str:
        h, w = self.size
        return f"size={h}x{w},resize={self.resize},color={self.color},layout={self.layout}"

    @property
    def is_identity_normalization(self) -> bool:
        return self.scale == 1.0 and all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], *, where: str) -> Preprocess:
        """Build from a YAML/JSON mapping; every error names ``where`` (e.g. 'fleet.yaml: models[0]')."""
        if not isinstance(d, Mapping):
            raise EdgequantError(f"{where}: preprocess must be a mapping, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in allowed)
        if unknown:
            raise EdgequantError(f"{where}: unknown preprocess key {unknown[0]!r} (allowed: {', '.join(allowed)})")
        if "size" not in d:
            raise EdgequantError(f"{where}: preprocess needs size (e.g. size=224x224, height x width)")
        values = {k: _NORMALIZERS[k](v, where) for k, v in d.items()}
        try:
            return cls(**values)
        except EdgequantError as exc:
            raise EdgequantError(str(exc).replace("preprocess:", f"{where}:", 1)) from None

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse the CLI form ``size=224x224,color=rgb,mean=0.485,0.456,0.406,std=...`` or a .yaml/.json path.

        A comma-separated token without ``=`` continues the previous key's value list, so
        multi-channel mean/std need no extra quoting.
        """
        text = text.strip()
        if text.lower().endswith((".yaml", ".yml", ".json")):
            return cls._from_file(Path(text))
        mapping: dict[str, Any] = {}
        key = None
        for token in (t.strip() for t in text.strip("[]").split(",")):
            if not token:
                continue
            if "=" in token:
                key, value = (s.strip() for s in token.split("=", 1))
                if key in mapping:
                    raise EdgequantError(f"--preprocess: key {key!r} given twice")
                mapping[key] = [value.strip("[]")]
            elif key is None:
                raise EdgequantError(f"--preprocess: expected key=value, got {token!r}")
            else:
                mapping[key].append(token.strip("[]"))
        flat = {k: v[0] if len(v) == 1 else v for k, v in mapping.items()}
        return cls.from_mapping(flat, where="--preprocess")

    @classmethod
    def _from_file(cls, path: Path) -> Preprocess:
        if not path.is_file():
            raise EdgequantError(f"{path}: no such preprocess file")
        try:
            raw = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                import yaml

                data = yaml.safe_load(raw)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise EdgequantError(f"{path}: cannot read preprocess spec ({exc})") from None
        except Exception as exc:  # yaml.YAMLError: keep the first line only
            raise EdgequantError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if isinstance(data, Mapping) and set(data) == {"preprocess"}:
            data = data["preprocess"]
        return cls.from_mapping(data, where=str(path))


# --- value normalizers: accept YAML/CLI spellings, return the declared type, or raise ---------

def _choice(options: tuple[str, ...], key: str):
    def norm(v: Any, where: str) -> str:
        s = str(v).strip().lower()
        if s not in options:
            raise EdgequantError(f"{where}: {key}={v!r} is not one of {', '.join(options)}")
        return s
    return norm


def _number(v: Any, where: str, key: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise EdgequantError(f"{where}: {key}={v!r} is not a number") from None
    if isinstance(v, bool) or not math.isfinite(x):
        raise EdgequantError(f"{where}: {key}={v!r} is not a finite number")
    return x


def _size(v: Any, where: str) -> tuple[int, int]:
    if isinstance(v, str):
        parts: list[Any] = [p for p in v.lower().replace("x", " ").replace(",", " ").split()]
    elif isinstance(v, (int, float)):
        parts = [v]
    else:
        parts = list(v) if isinstance(v, (list, tuple)) else [v]
    try:
        dims = [int(str(p)) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise EdgequantError(f"{where}: size={v!r} must be HEIGHTxWIDTH in pixels (e.g. 224x224)")
    return dims[0], dims[1]


def _floats(key: str, *, nonzero: bool = False):
    def norm(v: Any, where: str) -> tuple[float, ...]:
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        if len(items) not in (1, 3):
            raise EdgequantError(f"{where}: {key} needs 1 or 3 values, got {len(items)}")
        out = tuple(_number(x, where, key) for x in items)
        if nonzero and any(x == 0 for x in out):
            raise EdgequantError(f"{where}: {key} must not contain 0 (it divides)")
        return out
    return norm


def _positive(key: str, upper: float = math.inf):
    def norm(v: Any, where: str) -> float:
        x = _number(v, where, key)
        if not 0 < x <= upper:
            raise EdgequantError(f"{where}: {key}={v!r} must be > 0" + (f" and <= {upper:g}" if upper < math.inf else ""))
        return x
    return norm


def _pad(v: Any, where: str) -> int:
    x = _number(v, where, "pad")
    if x != int(x) or not 0 <= x <= 255:
        raise EdgequantError(f"{where}: pad={v!r} must be an integer 0..255")
    return int(x)


_NORMALIZERS = {
    "size": _size,
    "resize": _choice(RESIZE_MODES, "resize"),
    "color": _choice(COLORS, "color"),
    "layout": _choice(LAYOUTS, "layout"),
    "scale": _positive("scale"),
    "mean": _floats("mean"),
    "std": _floats("std", nonzero=True),
    "pad": _pad,
    "crop_fraction": _positive("crop_fraction", 1.0),
}


# --- applying a spec to an image file ----------------------------------------------------------

def load_image(path: Path, pp: Preprocess) -> np.ndarray:
    """Decode, orient (EXIF), convert, resize and normalize one image; float32, no batch dim."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if pp.color == "gray" else "RGB")
            im = _resize(im, pp)
            arr = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EdgequantError(f"{path}: cannot decode image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pp.color == "bgr":
        arr = arr[:, :, ::-1]
    arr = (arr * np.float32(pp.scale) - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    if pp.layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_image(path: Path) -> None:
    """Cheap validity check (reads the header only), so a bad file fails before calibration runs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EdgequantError(f"{path}: not a readable image ({exc})") from None


def _resize(im, pp: Preprocess):
    from PIL import Image

    h, w = pp.size
    iw, ih = im.size
    if pp.resize == "stretch":
        return im.resize((w, h), Image.Resampling.BILINEAR)
    if pp.resize == "letterbox":
        r = min(w / iw, h / ih)
        nw, nh = max(1, round(iw * r)), max(1, round(ih * r))
        canvas = Image.new(im.mode, (w, h), (pp.pad,) * len(im.getbands()))
        canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
        return canvas
    r = max(w / iw, h / ih) / pp.crop_fraction  # center_crop: cover, then cut the centre
    nw, nh = max(w, round(iw * r)), max(h, round(ih * r))
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.resize((nw, nh), Image.Resampling.BILINEAR).crop((left, top, left + w, top + h))
