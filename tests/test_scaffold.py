"""``tk new-plugin``: the generated packages install, load, run in ``tk run`` and pass their own tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import STAND_IN, run_tk, tk
from toolkit.errors import TkError
from toolkit.plugins.commands.new_plugin import render_plugin
from toolkit.plugin.registry import load_registry
from toolkit.testing import checks_for


def _pip_install_target(package: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(package)], check=True, capture_output=True, text=True)


def test_analysis_scaffold_installs_lists_runs_and_passes_its_own_test(tmp_path, breakhis):
    made = tk("new-plugin", "my_thing", "--kind", "analysis", "--dir", tmp_path)
    assert made.exit_code == 0, made.stderr
    package = Path(made.stdout.strip())
    assert package == tmp_path / "tk-my-thing"

    site = tmp_path / "site"
    _pip_install_target(package, site)
    env = {"PYTHONPATH": str(site), "TK_LOAD_PLUGINS": "my_thing"}  # a fresh process finds the install on its path
    rows = json.loads(run_tk("plugins", "--json", env=env).stdout)
    mine = [r for r in rows if r["name"] == "my_thing"]
    assert mine == [{"name": "my_thing", "kind": "analysis", "plugin": "my_thing (tk-my-thing)",
                     "source": "entrypoint", "version": "0.1.0", "needs": [],
                     "settings": [{"key": "my_thing.scale", "type": "str", "default": "raw",
                                   "choices": ["raw", "standardised"], "help": "raw or standardised features"}]}]

    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = run_tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--plugin", STAND_IN,
                    "--analysis", "my_thing", "--store", store, "--out", out, env=env)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT label, images FROM results_my_thing ORDER BY label").fetchall() == [
        ("benign", 16), ("malignant", 16)]
    report = next(out.glob("*.html")).read_text()
    assert "My thing" in report and "lie farthest from the centre" in report

    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=package,
                            capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "6 passed" in tested.stdout  # the registration test and the five analysis checks


@pytest.mark.parametrize("kind, name", [pytest.param("backbone", "my_net", marks=pytest.mark.slow),  # MobileNetV3
                                        ("exporter", "my_csv")])
def test_backbone_and_exporter_scaffolds_load_by_path_and_pass_the_kit(tmp_path, kind, name):
    package = render_plugin(name, kind, tmp_path)
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", f"tests/test_{name}.py", f"tk_{name}/__init__.py"]
    registry = load_registry([package / f"tk_{name}" / "__init__.py"])
    item = getattr(registry, kind)(name)
    assert registry.origins[(kind, name)].source == "file"
    for check in checks_for(item):
        check(item)


@pytest.mark.parametrize("name, message", [
    ("My-Thing", "must be lower-case letters"),
    ('x"\nimport os', "must be lower-case letters"),
    ("a" * 42, "must be lower-case letters"),
])
def test_names_that_could_break_the_generated_code_are_refused(tmp_path, name, message):
    with pytest.raises(TkError, match=message):
        render_plugin(name, "analysis", tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_name_ending_in_a_newline_is_refused(tmp_path):
    """Issue #20, item 14: `$` in the name patterns also matched before a final newline."""
    from toolkit.models.variants import VARIANT_NAME
    from toolkit.plugin.registry import EXPORTER_NAME, PLUGIN_NAME
    from toolkit.plugin.results import NAME_PATTERN

    with pytest.raises(TkError, match="must be lower-case letters"):
        render_plugin("evil\n", "analysis", tmp_path)
    assert not any(tmp_path.iterdir())
    for pattern, name in [(PLUGIN_NAME, "evil"), (EXPORTER_NAME, "evil"), (NAME_PATTERN, "evil"),
                          (VARIANT_NAME, "tiny@t1")]:
        assert pattern.match(name) and not pattern.match(name + "\n")


def test_refusals_are_one_line_errors(tmp_path):
    assert tk("new-plugin", "dup", "--dir", tmp_path).exit_code == 0
    again = tk("new-plugin", "dup", "--dir", tmp_path)
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [f"error: {tmp_path / 'tk-dup'} already exists; choose another "
                                                 "NAME or --dir, or remove it"]
    taken = tk("new-plugin", "pca", "--dir", tmp_path)
    assert taken.exit_code == 1 and "'pca' is already taken by the analysis of plugin pca" in taken.stderr
    wrong_kind = tk("new-plugin", "thing", "--kind", "model", "--dir", tmp_path)
    assert wrong_kind.exit_code == 1 and "--kind 'model' is not one of analysis, backbone, exporter" in wrong_kind.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tk-dup"]


def test_new_plugin_refuses_a_name_whose_results_would_be_a_core_table(tmp_path):
    refused = tk("new-plugin", "findings", "--dir", tmp_path)
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        "error: analysis name 'findings' would store its results in tk's core table results_findings; "
        "choose another name"]
    assert not any(tmp_path.iterdir())
