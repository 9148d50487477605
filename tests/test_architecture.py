"""The plugin boundary: core (``toolkit/``) never imports a built-in plugin (``toolkit.plugins``)."""

from __future__ import annotations

import ast
from pathlib import Path

import toolkit

CORE = Path(toolkit.__file__).parent
PLUGINS_PACKAGE = "toolkit.plugins"


def plugin_imports(source: str) -> list[int]:
    """Line numbers in ``source`` that import ``toolkit.plugins`` or name it in a string (for
    ``importlib.import_module``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value.startswith(PLUGINS_PACKAGE) else []
        else:
            continue
        if any(name == PLUGINS_PACKAGE or name.startswith(PLUGINS_PACKAGE + ".") for name in names):
            lines.append(node.lineno)
    return lines


def test_core_never_imports_a_plugin():
    offenders = [f"{path.relative_to(CORE.parent)}:{line}" for path in sorted(CORE.rglob("*.py"))
                 for line in plugin_imports(path.read_text(encoding="utf-8"))]
    assert not offenders, f"core modules import toolkit.plugins: {offenders}"


def test_the_boundary_check_catches_every_form_of_import():
    for source in ("import toolkit.plugins.analyses.probe", "from toolkit.plugins.analyses import probe",
                   "from toolkit.plugins.analyses.probe import C_DEFAULT", "from toolkit import plugins",
                   "importlib.import_module('toolkit.plugins.analyses.probe')"):
        assert plugin_imports(source) == [1], source
    assert plugin_imports("from toolkit.plugin.types import Analysis\nimport toolkit.pluginsx") == []
