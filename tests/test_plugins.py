"""The plugin system: discovery, origins, duplicates, misspelled hooks, and no TensorFlow import."""

from __future__ import annotations

import json
import textwrap

import duckdb
import pytest

from tests.conftest import PLUGINS, TINY, run_tk_reporting_tensorflow, tk
from toolkit.errors import PluginError
from toolkit.plugin.registry import load_registry

BUILTINS = {("resnet50", "backbone"), ("efficientnetb0", "backbone"), ("densenet201", "backbone"),
            ("pca", "analysis"), ("ttest", "analysis"), ("anova", "analysis"), ("correlation", "analysis"),
            ("cka", "analysis"), ("clustering", "analysis"), ("clusters", "analysis"), ("probe", "analysis"), ("backbone_comparison", "analysis"), ("integrity", "analysis"),
            ("gradcam", "analysis"), ("clinical", "analysis"), ("html", "exporter"), ("savedmodel", "exporter"), ("tflite", "exporter"),
            ("tflite-fp16", "exporter"), ("tflite-dynamic", "exporter"), ("tflite-int8", "exporter"),
            ("macenko", "stain"), ("reinhard", "stain")}


def test_tk_plugins_lists_builtins_without_importing_tensorflow(tmp_path):
    result = run_tk_reporting_tensorflow("plugins", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(r["name"], r["kind"]) for r in rows} == BUILTINS
    assert all(r["source"] == "builtin" for r in rows)
    assert result.stderr.strip().endswith("TENSORFLOW_NOT_IMPORTED")


def test_plugin_file_is_listed_used_and_stored(tmp_path, breakhis):
    extra = PLUGINS / "extra_plugin.py"
    listed = json.loads(tk("plugins", "--json", "--plugin", extra).stdout)
    mine = {(r["name"], r["kind"]): r for r in listed if r["source"] == "file"}
    assert set(mine) == {("micro", "backbone"), ("feature_means", "analysis")}
    assert mine[("micro", "backbone")]["version"] == "1.2.3"
    assert mine[("micro", "backbone")]["plugin"].endswith("extra_plugin.py")

    store = tmp_path / "tk.duckdb"
    result = tk("run", breakhis, "--backbone", "micro", "--store", store, "--out", tmp_path / "out",
                "--plugin", extra)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT count(*) FROM results_feature_means").fetchall() == [(4,)]
    assert con.execute("SELECT backbone, status FROM analysis_runs WHERE analysis = 'feature_means'").fetchall() == [("micro", "ok")]
    report = next((tmp_path / "out").glob("*.html")).read_text()
    assert "Feature means" in report and "4 feature means computed" in report


def test_local_tk_plugins_folder_is_loaded(tmp_path):
    (tmp_path / "tk_plugins").mkdir()
    (tmp_path / "tk_plugins" / "tiny.py").write_text(TINY.read_text())
    rows = json.loads(tk("plugins", "--json", cwd=tmp_path).stdout)
    assert ("tiny", "backbone") in {(r["name"], r["kind"]) for r in rows}


def test_duplicate_name_is_refused_naming_both_plugins(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(textwrap.dedent("""
        from toolkit import hookimpl
        from toolkit.plugin.types import Analysis

        @hookimpl
        def register_analyses(register):
            register(Analysis(name="pca", run=lambda context: []))
    """))
    with pytest.raises(PluginError, match=r"analysis 'pca' is registered twice: by pca and by .*clash.py"):
        load_registry([clash])
    result = tk("plugins", "--plugin", clash)
    assert result.exit_code == 1 and "registered twice" in result.stderr


def test_misspelled_hook_fails_loudly(tmp_path):
    typo = tmp_path / "typo.py"
    typo.write_text("from toolkit import hookimpl\n\n@hookimpl\ndef register_backbone(register):\n    pass\n")
    with pytest.raises(PluginError, match="register_backbone"):
        load_registry([typo])


def test_blocking_a_plugin_by_name(monkeypatch):
    monkeypatch.setenv("TK_BLOCK_PLUGINS", "pca")
    registry = load_registry()
    assert "pca" not in registry.analyses and "resnet50" in registry.backbones


def test_register_commands_hook_adds_a_command(tmp_path):
    plugin = tmp_path / "hello.py"
    plugin.write_text(textwrap.dedent("""
        import typer
        from toolkit import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command()
            def hello(name: str):
                print(f"hello {name}")
    """))
    result = tk("hello", "world", "--plugin", plugin)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "hello world"
