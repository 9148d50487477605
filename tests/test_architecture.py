"""The architecture, pinned: core (``toolkit/``) never imports a built-in plugin (``toolkit.plugins``),
the command line starts fast, and no function outgrows 80 lines."""

from __future__ import annotations

import ast
import re
import json
import subprocess
import sys
from pathlib import Path

import pytest

import toolkit
from tests.conftest import tk

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


HEAVY = ("pandas", "scipy.stats", "matplotlib", "tensorflow", "sklearn", "duckdb", "onnxruntime", "keras_hub")
STARTUP_PROBE = """
import json, sys, time
from toolkit.cli import main
from toolkit.lazy import is_loaded
started = time.process_time()
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"cpu": time.process_time() - started, "loaded": [m for m in %r if is_loaded(m)]}), file=sys.stderr)
""" % (HEAVY,)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["plugins", "--json"], ["run", "--help"]])
def test_fast_start_imports_no_heavy_library(args):
    """Listing commands and plugins loads every plugin module, but none of the libraries they compute with."""
    done = subprocess.run([sys.executable, "-c", STARTUP_PROBE, *args], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["loaded"] == [], f"tk {' '.join(args)} imported {report['loaded']}"
    assert done.stdout.strip(), "the command printed nothing"


def test_version_works():
    done = tk("--version")
    assert done.exit_code == 0, done.stderr
    assert done.stdout.strip() == f"tk {toolkit.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["sql", "--help"]])
def test_help_shows_no_type_beside_flags(args):
    """A flag takes no value, so --help shows no ``<bool>`` beside it (issue #17, item 14); options
    that take a value keep their type."""
    done = tk(*args, env={"COLUMNS": "120"})
    assert done.exit_code == 0, done.stderr
    assert "<bool>" not in done.stdout
    help_line = next(line for line in done.stdout.splitlines() if "--help" in line)
    assert "Show this message and exit." in help_line
    if args[0] == "run":
        assert re.search(r"--seed\s+<int>", done.stdout)


def test_report_templates_name_no_plugin():
    """The report is assembled from sections: its templates name no analysis, exporter or table of a plugin."""
    from toolkit.plugin.registry import load_registry
    from toolkit.report.environment import builtin_template_dir

    registry = load_registry()
    names = {*registry.analyses, *(n for n in registry.exporters if n != "html"), "export_parity", "training_runs"}
    for template in builtin_template_dir().glob("*.html"):
        if template.name == "glossary.html":  # explains terms (probe, ANOVA, ...) to readers, reads no data
            continue
        text = template.read_text(encoding="utf-8")
        named = sorted(n for n in names if re.search(rf"\b{re.escape(n)}\b", text))
        assert not named, f"{template.name} names plugin parts {named}; contribute them through report_sections"


MAX_FUNCTION_LINES = 80
PACKAGES = (CORE, CORE.parent / "plugins")


def long_functions(source: str, max_lines: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """Functions (and methods) in ``source`` longer than ``max_lines`` lines, decorators and
    docstring included, with their length; a migration's DDL (``m001_create_tables``, ...) is exempt."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not re.fullmatch(r"m\d{3}_\w+", node.name):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.end_lineno - first + 1 > max_lines:
                found.append((node.name, node.end_lineno - first + 1))
    return found


def test_no_function_is_longer_than_80_lines():
    """Commands are module-level functions sharing option definitions, not closures in one builder."""
    offenders = [f"{path.relative_to(CORE.parent)}::{name} ({length} lines)" for package in PACKAGES
                 for path in sorted(package.rglob("*.py")) for name, length in long_functions(path.read_text("utf-8"))]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: {offenders}"


def _function(name: str, lines: int, indent: str = "") -> str:
    """The source of a function ``lines`` lines long."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))


def test_the_length_check_counts_nested_functions_and_spares_only_migrations():
    assert long_functions(_function("fits", 80)) == []
    assert long_functions(_function("long", 81)) == [("long", 81)]
    assert long_functions("@decorated\n" + _function("long", 80)) == [("long", 81)]
    assert long_functions("def build():\n" + _function("command", 81, "    ")) == [("build", 82), ("command", 81)]
    assert long_functions(_function("m001_create_tables", 90)) == []
    assert long_functions(_function("migrate", 90)) == [("migrate", 90)]


def test_help_text_shows_square_brackets(monkeypatch, capsys):
    """Rich reads ``[ray]`` in a help text as markup; the install hint must show it."""
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exited:
        from toolkit.cli import main

        main(["run", "--help"])
    assert exited.value.code == 0
    assert "pip install 'tk-embeddings[ray]'" in capsys.readouterr().out


NEW_IN = {"tomllib": (3, 11)}  # standard-library modules younger than Python 3.10, with the release that added them


def imported_modules(source: str) -> set[str]:
    """The top-level names of the modules ``source`` imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_requires_python_is_true_to_the_code():
    """The oldest Python the project (and the plugin packages it scaffolds) accepts has every
    standard-library module the code imports."""
    import tomllib

    root = CORE.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["project"]["requires-python"]
    oldest = tuple(int(part) for part in re.fullmatch(r">=(\d+)\.(\d+)", declared).groups())
    needed = {module: NEW_IN[module] for package in PACKAGES for path in package.rglob("*.py")
              for module in imported_modules(path.read_text("utf-8")) if module in NEW_IN}
    assert all(oldest >= version for version in needed.values()), f"requires-python {declared}, but {needed}"
    for plugin_project in (root / "plugins/commands/scaffold/pyproject.toml.jinja",
                           root / "docs/examples/tk-rf-importance/pyproject.toml"):
        assert f'requires-python = "{declared}"' in plugin_project.read_text("utf-8"), plugin_project
