"""report.json (the contract in DESIGN.md, validated against a shipped JSON schema) and report.html."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import EdgequantError
from ..fsutil import write_text_atomic

SCHEMA_ID = "edgequant.report/1"
# JSON has no Infinity: an exact match (fp32 against itself) is written as this many dB.
SQNR_CAP_DB = 200.0


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("report.schema.json").read_text())


def validate_report(report: dict) -> None:
    """Raise EdgequantError naming the first contract violation."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(load_schema()).iter_errors(report), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(root)"
        raise EdgequantError(f"report does not match {SCHEMA_ID} at {where}: {e.message[:200]}")


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) and numpy scalars recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else math.copysign(SQNR_CAP_DB, value)
    return value


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    """Validate, then write report.json and report.html into ``out_dir`` atomically."""
    from .html import render_html

    report = json_safe(report)
    validate_report(report)
    out = Path(out_dir)
    json_path, html_path = out / "report.json", out / "report.html"
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(html_path, render_html(report))
    return json_path, html_path


def read_report(path: str | Path) -> dict:
    p = Path(path)
    try:
        report = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise EdgequantError(f"{p}: cannot read report ({exc})") from None
    validate_report(report)
    return report
