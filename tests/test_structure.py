"""The layering the design promises, checked on the source: one place runs models, imports
flow one way (cli -> api -> pipeline/tune -> quantize/qdq -> devices -> measure -> data/model),
and modules stay small. (The CLI's own rule, every command over edgequant.api, is in test_api.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "edgequant"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("edgequant")}


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}

# layer -> what it must never import (a prefix match on edgequant.X)
UPPER = ["edgequant.cli", "edgequant.api", "edgequant.scaleout", "edgequant.fleet", "edgequant.tune",
         "edgequant.pipeline", "edgequant.qat"]
FORBIDDEN = {
    "edgequant.measure": [*UPPER, "edgequant.devices", "edgequant.qdq", "edgequant.quantize", "edgequant.sensitivity"],
    "edgequant.data": [*UPPER, "edgequant.devices", "edgequant.qdq", "edgequant.quantize", "edgequant.measure"],
    "edgequant.devices": [*UPPER, "edgequant.qdq", "edgequant.quantize", "edgequant.sensitivity",
                          "edgequant.verdict", "edgequant.variant"],
    "edgequant.qdq": UPPER,
    "edgequant.quantize": UPPER,
    "edgequant.verdict": [*UPPER, "edgequant.devices"],
    "edgequant.fleet": ["edgequant.cli", "edgequant.api", "edgequant.scaleout"],
    # beside tune: builds on quantize/qdq/devices/measure/data/model; cli and api call it
    "edgequant.qat": [u for u in UPPER if u != "edgequant.qat"],
    "edgequant.scaleout": ["edgequant.cli", "edgequant.api"],
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downward(layer: str) -> None:
    bad = sorted(f"{mod} imports {imp}" for mod, imps in IMPORTS.items() if mod == layer or mod.startswith(layer + ".")
                 for imp in imps for f in FORBIDDEN[layer] if imp == f or imp.startswith(f + "."))
    assert bad == []


def test_only_devices_create_inference_sessions() -> None:
    offenders = sorted(str(p.relative_to(SRC)) for name, p in MODULES.items()
                       if "InferenceSession(" in p.read_text() and not name.startswith("edgequant.devices"))
    assert offenders == []
    assert "InferenceSession(" in (SRC / "devices" / "cpu_session.py").read_text()


def test_modules_stay_small() -> None:
    long = sorted(f"{p.relative_to(SRC)}: {n} lines" for p in MODULES.values()
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert long == []


def _imports_top(path: Path, package: str) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == package for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == package:
            return True
    return False


def test_only_scaleout_imports_ray() -> None:
    """Without --ray nothing imports Ray (it is an optional extra, and slow to import)."""
    allowed = ("edgequant.scaleout", "edgequant.devices._ray", "edgequant.devices.ray_node")
    offenders = sorted(name for name, p in MODULES.items() if _imports_top(p, "ray") and not name.startswith(allowed))
    assert offenders == []


def test_only_qat_imports_torch() -> None:
    """torch is the optional qat extra: nothing else may import it."""
    offenders = sorted(name for name, p in MODULES.items()
                       if _imports_top(p, "torch") and not name.startswith("edgequant.qat"))
    assert offenders == []
