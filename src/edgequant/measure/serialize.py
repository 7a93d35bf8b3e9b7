"""JSON output of measurements: strict JSON (no NaN/Infinity), numpy scalars as Python numbers."""

from __future__ import annotations

import json
import math
from typing import Any

# Same convention as report.json: JSON has no Infinity, so an exact match (SQNR = +inf dB) is
# written as this many dB; NaN becomes null.
SQNR_CAP_DB = 200.0


def json_safe(value: Any) -> Any:
    """Recursively replace numpy scalars/arrays and non-finite floats with valid JSON values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
        if isinstance(value, list):
            return json_safe(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else math.copysign(SQNR_CAP_DB, value)
    return value


def dumps(doc: Any) -> str:
    """Indented strict JSON with a trailing newline."""
    return json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"
