"""Import rules between the layers, checked on the source (every import statement, including the
ones inside functions):

- ``estimators`` (the library) imports nothing from ``app`` or ``bench``;
- nothing in ``app`` imports ``bench``;
- the torch layer (``app.encoders``, ``app.training``) imports nothing from the service
  (``app.services``, ``app.db``, ``app.api``).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RULES = [
    ("estimators", ("app", "bench")),
    ("app", ("bench",)),
    ("app/encoders", ("app.services", "app.db", "app.api", "app.main", "app.cli")),
    ("app/training", ("app.services", "app.db", "app.api", "app.main", "app.cli")),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)  # `from app import services`
    return out


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


def test_import_rules_hold():
    bad = [v for folder, forbidden in RULES for v in _violations(folder, forbidden)]
    assert bad == []


def test_the_checker_sees_nested_and_relative_imports():
    probe = ROOT / "app" / "encoders" / "probe.py"  # not written: the source is given
    mods = imported_modules(probe, "def f():\n    from ..services import jobs\n    import bench.corpora\n")
    assert "app.services" in mods and "app.services.jobs" in mods and "bench.corpora" in mods
