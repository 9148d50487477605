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


# --- the public API: built-in plugins import what a third party can -------------------------------


import toolkit.plugins  # noqa: E402
import toolkit.stats  # noqa: E402
import toolkit.testing  # noqa: E402
from toolkit.plugins import BUILTIN_PLUGINS  # noqa: E402

PLUGIN_DIR = Path(toolkit.plugins.__file__).parent
PUBLIC = {"toolkit": set(toolkit.__all__) | {"stats", "testing"}, "toolkit.stats": set(toolkit.stats.__all__),
          "toolkit.testing": set(toolkit.testing.__all__)}


def plugin_module(path: Path) -> str:
    """The dotted name of a file under ``plugins/`` (``toolkit.plugins.stain.macenko``)."""
    parts = path.relative_to(PLUGIN_DIR).with_suffix("").parts
    return ".".join(("toolkit.plugins", *(parts[:-1] if parts[-1] == "__init__" else parts)))


PLUGIN_FILES = {plugin_module(path): path for path in sorted(PLUGIN_DIR.rglob("*.py"))}


def toolkit_imports(source: str, module: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import of a ``toolkit`` module in ``source`` of plugin ``module``:
    absolute and relative imports, and ``importlib.import_module("toolkit...")`` / ``__import__``."""
    package = module if PLUGIN_FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base, tuple(alias.name for alias in node.names)))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value, ()))
    return [(line, name, names) for line, name, names in found if name == "toolkit" or name.startswith("toolkit.")]


def imported_plugin_modules(name: str, names: tuple[str, ...]) -> list[str]:
    """The plugin modules an import of ``names`` from ``name`` loads (submodules, or ``name`` itself)."""
    submodules = [f"{name}.{member}" for member in names if f"{name}.{member}" in PLUGIN_FILES]
    return submodules or ([name] if name in PLUGIN_FILES else [])


def private_imports(module: str, source: str) -> list[str]:
    """What plugin ``module`` imports from tk besides ``toolkit``, ``toolkit.stats``, ``toolkit.testing``
    (public names only) and modules in its own folder."""
    folder = PLUGIN_FILES[module].parent
    offences = []
    for line, name, names in toolkit_imports(source, module):
        if name in PUBLIC:
            private = [n for n in names if n not in PUBLIC[name]]
            offences += [f"line {line}: {name}.{n} is not public" for n in private]
            continue
        targets = imported_plugin_modules(name, names)
        if not targets or any(not PLUGIN_FILES[t].is_relative_to(folder) for t in targets):
            offences.append(f"line {line}: {name} is neither public nor a module of its own folder")
    return offences


def test_plugins_import_only_the_public_api():
    """Built-in plugins import from tk exactly what a third-party plugin can: ``toolkit``,
    ``toolkit.stats``, ``toolkit.testing``, and modules of their own folder."""
    offences = [f"{path.relative_to(PLUGIN_DIR.parent)} {offence}" for module, path in PLUGIN_FILES.items()
                for offence in private_imports(module, path.read_text(encoding="utf-8"))]
    assert not offences, "built-in plugins import tk's internals:\n" + "\n".join(offences)


def test_example_and_test_plugins_import_only_the_public_api():
    """What the docs and tests load as third-party plugins imports from tk what a third party can."""
    root = Path(__file__).parents[1]
    offences = []
    for path in [*sorted((root / "tests" / "plugins").glob("*.py")), root / "docs" / "examples" / "every_hook.py",
                 root / "docs" / "examples" / "tk-rf-importance" / "tk_rf_importance" / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = ([(a.name, ()) for a in node.names] if isinstance(node, ast.Import) else
                        [(node.module or "", tuple(a.name for a in node.names))] if isinstance(node, ast.ImportFrom) else [])
            offences += [f"{path.relative_to(root)}:{node.lineno} {name}" for name, names in imported
                         if (name == "toolkit" or name.startswith("toolkit."))
                         and (name not in PUBLIC or not set(names) <= PUBLIC[name])]
    assert not offences, "plugins of the docs and tests import tk's internals:\n" + "\n".join(offences)


def test_the_public_import_check_catches_every_form_of_private_import():
    module = "toolkit.plugins.analyses.clusters"
    for source in ("from toolkit.analysis.stats import bh_qvalues", "import toolkit.analysis.stats",
                   "from toolkit import load_registry", "from toolkit.stats import RowSpace",
                   "importlib.import_module('toolkit.report.data')", "from ...report import data",
                   "from toolkit.plugins.exporters.parity import PARITY", "from ..stain import he_reference"):
        assert len(private_imports(module, source)) == 1, source
    for source in ("from toolkit import Analysis, hookimpl", "from toolkit.stats import one_way",
                   "from toolkit.testing import synthetic_run", "from toolkit import stats",
                   "from toolkit.plugins.analyses.probe_report import summary_section", "from . import protocols",
                   "from .protocols import PROTOCOLS", "import numpy"):
        assert private_imports(module, source) == [], source


def plugin_imports_graph() -> dict[str, set[str]]:
    """Every plugin module -> the plugin modules it imports (anywhere in it)."""
    return {module: {target for _, name, names in toolkit_imports(path.read_text(encoding="utf-8"), module)
                     for target in imported_plugin_modules(name, names)}
            for module, path in PLUGIN_FILES.items()}


def registered_reaches(graph: dict[str, set[str]], registered: set[str]) -> list[str]:
    """``A -> ... -> B`` for every registered module A that imports another registered module B,
    directly or through modules that are not registered."""
    chains = []
    for start in sorted(registered):
        pending, seen = [[start]], {start}
        while pending:
            path = pending.pop()
            for target in sorted(graph.get(path[-1], ())):
                if target in registered and target != start:
                    chains.append(" -> ".join([*path, target]))
                elif target not in seen and target not in registered:
                    seen.add(target)
                    pending.append([*path, target])
    return chains


def test_no_registered_plugin_imports_another():
    """A registered plugin module never imports another, directly or through a helper module: what
    two plugins share lives in the public API or in a helper that imports no registered module."""
    chains = registered_reaches(plugin_imports_graph(), set(BUILTIN_PLUGINS))
    assert not chains, "registered plugins import each other:\n" + "\n".join(chains)


def test_the_registered_import_check_follows_helpers():
    graph = {"a": {"helper"}, "helper": {"b"}, "b": set(), "c": {"other_helper"}, "other_helper": set()}
    assert registered_reaches(graph, {"a", "b", "c"}) == ["a -> helper -> b"]
    assert registered_reaches({"a": {"b"}, "b": set()}, {"a", "b"}) == ["a -> b"]


def _literal_names(node: ast.AST) -> list[str]:
    return [e.value for e in getattr(node, "elts", [node]) if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def analysis_reads(source: str) -> tuple[set[str], set[str], set[str]]:
    """The analyses ``source`` registers (``Analysis(name=...)``), declares it reads (``Needs(analyses=...)``,
    ``ReportSection(reads=...)``) and reads (``results("x")``, ``run_results(run, "x")``, ``result_table(run, "x")``)."""
    registered, declared, read = set(), set(), set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        called = getattr(node.func, "attr", getattr(node.func, "id", ""))
        keywords = {k.arg: k.value for k in node.keywords}
        if called == "Analysis" and "name" in keywords:
            registered.update(_literal_names(keywords["name"]))
        declared.update(_literal_names(keywords["analyses"]) if called == "Needs" and "analyses" in keywords else [])
        declared.update(_literal_names(keywords["reads"]) if called == "ReportSection" and "reads" in keywords else [])
        position = {"results": 0, "run_results": 1, "result_table": 1}.get(called)
        if position is not None and len(node.args) > position:
            read.update(_literal_names(node.args[position]))
    return registered, declared, read


def test_plugins_declare_the_results_they_read():
    """Every analysis a plugin reads the results of is its own or declared: ``Needs.analyses`` for an
    analysis, ``ReportSection.reads`` for a report section (a registered module with its helpers)."""
    graph, undeclared = plugin_imports_graph(), []
    for start in BUILTIN_PLUGINS:
        group, pending = {start}, [start]
        while pending:
            for target in graph[pending.pop()] - group - set(BUILTIN_PLUGINS):
                group.add(target)
                pending.append(target)
        registered, declared, read = map(set.union, *[analysis_reads(PLUGIN_FILES[m].read_text(encoding="utf-8"))
                                                       for m in sorted(group)])
        undeclared += [f"{start} reads {name}" for name in sorted(read - registered - declared)]
    assert not undeclared, "undeclared reads of other analyses' results:\n" + "\n".join(undeclared)


def test_the_public_api_is_documented_and_listed():
    """Every public name loads, callables and classes say what they are, and docs/architecture.md lists
    each in its public API section."""
    listing = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = listing[listing.index("## The public API"):]
    for module in (toolkit, toolkit.stats, toolkit.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not isinstance(value, re.Pattern):
                assert (value.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"
            assert f"`{name}`" in section, f"docs/architecture.md does not list {module.__name__}.{name}"


def test_importing_the_api_plugins_load_with_loads_no_heavy_library():
    """Built-in plugins import ``toolkit`` and ``toolkit.stats`` when they load (``tk --help``)."""
    code = ("import toolkit, toolkit.stats; from toolkit.lazy import is_loaded; "
            f"print([m for m in {HEAVY!r} if is_loaded(m)])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_cache_keys_cover_the_code_behind_public_names():
    """An analysis that imports ``from toolkit import new_figure`` or ``from toolkit.stats import
    compare_two`` is re-run when that code changes: its cache key hashes the modules behind them."""
    from toolkit.analysis.cache import module_tree

    tree = module_tree("toolkit.plugins.analyses.ttest")
    assert {"toolkit.analysis.two_groups", "toolkit.analysis.stats", "toolkit.analysis.figures",
            "toolkit.plugin.results"} <= set(tree)
