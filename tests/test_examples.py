"""docs/examples and the tutorials: the example plugin passes the kit and shows in a report, and the
code in the tutorials is the code that is tested."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import STAND_IN, tk
from toolkit.plugins.commands.new_plugin import render_plugin
from toolkit.plugin.registry import load_registry
from toolkit.testing import check_analysis

DOCS = Path(__file__).parent.parent / "docs"
RF_PACKAGE = DOCS / "examples" / "tk-rf-importance"
RF_MODULE = RF_PACKAGE / "tk_rf_importance" / "__init__.py"


def _code_after(marker: str, text: str) -> str:
    """The fenced code block that follows an HTML comment marker in a Markdown file."""
    match = re.search(re.escape(marker) + r"\n```\w*\n(.*?)```\n", text, re.S)
    assert match, f"no code block after {marker!r}"
    return match.group(1)


def test_rf_importance_passes_the_kit_when_loaded_by_path():
    registry = load_registry([RF_MODULE])
    assert registry.origins[("analysis", "rf_importance")].source == "file"
    check_analysis(registry.analysis("rf_importance"))


def test_rf_importance_shows_in_the_report_of_a_run(tmp_path, breakhis):
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--plugin", STAND_IN,
                "--plugin", RF_MODULE, "--analysis", "rf_importance", "--store", store, "--out", out)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT count(*), min(rank), max(rank) FROM results_rf_importance").fetchall() == [(10, 1, 10)]
    report = next(out.glob("*.html")).read_text()
    assert "Random-forest feature importance" in report
    assert "out-of-bag accuracy" in report and "most important stand_in embedding features" in report


def test_the_example_package_own_tests_pass():
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=RF_PACKAGE, capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "6 passed" in tested.stdout  # five conformance checks and the numbers test


def test_the_tutorial_shows_the_example_module_and_its_pyproject():
    tutorial = (DOCS / "writing-an-analysis.md").read_text()
    assert _code_after("<!-- full module: examples/tk-rf-importance/tk_rf_importance/__init__.py -->",
                       tutorial) == RF_MODULE.read_text()
    assert (RF_PACKAGE / "pyproject.toml").read_text() in tutorial


@pytest.mark.parametrize("doc, name, kind", [("writing-a-backbone.md", "mobilenetv3", "backbone"),
                                             ("writing-an-exporter.md", "embeddings_csv", "exporter")])
def test_the_backbone_and_exporter_guides_show_what_the_scaffold_writes(tmp_path, doc, name, kind):
    shown = _code_after(f"<!-- rendered: tk new-plugin {name} --kind {kind} -->", (DOCS / doc).read_text())
    package = render_plugin(name, kind, tmp_path)
    assert shown == (package / f"tk_{name}" / "__init__.py").read_text()
