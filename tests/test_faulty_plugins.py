"""A failing, malformed or slow analysis and a wrong-shaped backbone: the run goes on, the failure
is stored and shown, and the exit code says something failed."""

from __future__ import annotations

import time

import duckdb

from tests.conftest import PLUGINS, STAND_IN, TINY, tk

FAULTY = PLUGINS / "faulty_plugins.py"


def test_run_survives_faulty_plugins(tmp_path, breakhis):
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    started = time.monotonic()
    result = tk("run", breakhis, "--backbone", "tiny,wrongshape", "--store", store, "--out", out,
                "--analysis", "raises,malformed,sleepy,well_behaved", "--analysis-timeout", "2",
                "--plugin", TINY, "--plugin", FAULTY)
    assert time.monotonic() - started < 28, "the sleeping analysis was waited for"
    assert result.exit_code == 3, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    statuses = dict(((a, s), m) for a, s, m in con.execute(
        "SELECT analysis, status, message FROM analysis_runs WHERE backbone = 'tiny'").fetchall())
    assert set(statuses) == {("raises", "failed"), ("malformed", "failed"), ("sleepy", "failed"), ("well_behaved", "ok")}
    assert statuses[("raises", "failed")].startswith("RuntimeError: this analysis always fails (at faulty_plugins.py:")
    assert "returned str" in statuses[("malformed", "failed")]
    assert "longer than 2 s (--analysis-timeout)" in statuses[("sleepy", "failed")]
    backbone = con.execute("SELECT status, error FROM run_backbones WHERE backbone = 'wrongshape'").fetchall()
    assert backbone[0][0] == "failed" and "declares dim 7 but its model outputs shape (None, 8)" in backbone[0][1]
    assert con.execute("SELECT status FROM runs").fetchall() == [("partial",)]
    assert con.execute("SELECT count(*) FROM results_well_behaved_coords").fetchall() == [(32,)]
    html = next(out.glob("*.html")).read_text()
    assert 'id="failures"' in html and "this analysis always fails" in html and "wrongshape" in html


def test_an_exporter_writing_outside_out_is_refused(tmp_path, breakhis):
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", breakhis, "--backbone", "stand_in", "--store", store, "--out", out, "--analysis", "none",
                "--export", "escape,html", "--plugin", STAND_IN, "--plugin", FAULTY)
    assert result.exit_code == 3
    assert "exporter escape: ExportEscape: wrote outside --out" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()  # refused at the join, before anything was written
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT exporter FROM exports").fetchall() == [("html",)]  # the escaped path is not recorded
    assert list(out.glob("tk-report-*.html"))  # the other exporter still ran


def test_an_exporter_writing_beside_out_through_a_plain_path_fails_in_run_and_export(tmp_path, breakhis):
    """Issue #20, item 7: only the returned paths were checked (and `tk export` checked nothing), so an
    exporter that wrote beside --out and returned nothing passed."""
    store, out = tmp_path / "tk.duckdb", tmp_path / "out"
    result = tk("run", breakhis, "--backbone", "stand_in", "--store", store, "--out", out, "--analysis", "none",
                "--export", "stray,html", "--plugin", STAND_IN, "--plugin", FAULTY)
    assert result.exit_code == 3, result.stderr
    assert f"exporter stray: ExportEscape: wrote outside --out: {tmp_path / 'stray.txt'}" in result.stderr
    assert list(out.glob("tk-report-*.html"))  # the other exporter still ran, the store beside --out is no stray
    (tmp_path / "stray.txt").unlink()
    exported = tk("export", "--backbone", "stand_in", "--format", "stray", "--store", store, "--out", out,
                  "--plugin", STAND_IN, "--plugin", FAULTY)
    assert exported.exit_code == 3, exported.stderr
    assert f"exporter stray: wrote outside --out: {tmp_path / 'stray.txt'}" in exported.stderr


CORE_NAMED = '''
import pandas as pd
from toolkit import hookimpl
from toolkit.plugin.results import Table
from toolkit.plugin.types import Analysis


@hookimpl
def register_analyses(register):
    register(Analysis(name="findings", run=lambda context: [Table("main", pd.DataFrame({"extra": [1.0]}))]))
'''


def _columns(store, table):
    con = duckdb.connect(str(store), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                          "ORDER BY ordinal_position", [table]).fetchall()]
    finally:
        con.close()


def test_an_analysis_named_like_a_core_table_is_refused_and_the_store_stays_usable(tmp_path, breakhis):
    plugin, store = tmp_path / "core_named.py", tmp_path / "tk.duckdb"
    plugin.write_text(CORE_NAMED)
    args = ["run", breakhis, "--backbone", "stand_in", "--store", store, "--export", "none", "--plugin", STAND_IN]
    refused = tk(*args, "--analysis", "findings", "--plugin", plugin)
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: plugin {plugin}: analysis name 'findings' would store its results in tk's core table "
        "results_findings; rename the analysis"]
    later = tk(*args, "--analysis", "pca")
    assert later.exit_code == 0, later.stderr
    assert _columns(store, "results_findings") == ["run_id", "backbone", "analysis", "severity", "message", "detail"]


NAN = PLUGINS / "nan_backbone.py"


def test_a_backbone_giving_nan_fails_and_stores_no_vector(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    args = ["run", breakhis, "--backbone", "tiny,nan", "--store", store, "--analysis", "pca", "--export", "none",
            "--batch-size", "8", "--plugin", TINY, "--plugin", NAN]
    for attempt in range(2):  # nothing bad is stored, so nothing bad is reused: the second run fails the same way
        result = tk(*args)
        assert result.exit_code == 3, result.stderr
        said = [line for line in result.stderr.splitlines() if "backbone nan" in line]
        assert said == ["error: backbone nan (fp32) gave NaN or infinite embeddings for 8 of 8 images in a batch; "
                        "none is stored and the backbone stops (check its model and weights)"], result.stderr
    con = duckdb.connect(str(store), read_only=True)
    backbones = dict(((b, s) for b, s in con.execute("SELECT backbone, status FROM run_backbones").fetchall()))
    assert backbones == {"tiny": "ok", "nan": "failed"}
    stored = [r[0] for r in con.execute("SELECT table_name FROM embedding_sets WHERE backbone = 'nan'").fetchall()]
    assert all(con.execute(f"SELECT count(*) FROM {t}").fetchall() == [(0,)] for t in stored)
    assert {b for (b,) in con.execute("SELECT DISTINCT backbone FROM analysis_runs WHERE analysis = 'pca'").fetchall()} == {"tiny"}


WARNING_PLUGIN = '''
import numpy as np
from toolkit import Analysis, Finding, hookimpl


def run(context):
    spread = np.asarray(context.embeddings).std(axis=0)
    ratio = (spread * 0) / (spread * 0)  # 0/0: numpy says "invalid value encountered in divide"
    return [Finding(f"{np.isnan(ratio).sum()} ratios")]


@hookimpl
def register_analyses(register):
    register(Analysis(name="warns", run=run))
'''


def test_a_numpy_runtime_warning_is_one_warning_line_not_raw_output(tmp_path, breakhis):
    """Issue #20, item 14: numpy's RuntimeWarnings reached stderr raw (path line, then the source line)."""
    plugin = tmp_path / "warns.py"
    plugin.write_text(WARNING_PLUGIN)
    result = tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--store", tmp_path / "tk.duckdb",
                "--analysis", "warns", "--export", "none", "--plugin", STAND_IN, "--plugin", plugin)
    assert result.exit_code == 0, result.stderr
    about = [line for line in result.stderr.splitlines() if "invalid value" in line]
    assert about == ["warning: RuntimeWarning at warns.py:8: invalid value encountered in divide"], result.stderr
    assert "ratio = (spread" not in result.stderr


def _autoescape_off(env):
    """A plugin's ``prepare_jinja2_environment`` that swaps report autoescaping for
    ``select_autoescape``: a truthy function that is off for templates rendered from strings."""
    import jinja2

    env.autoescape = jinja2.select_autoescape(["xml"])


def test_a_plugin_cannot_switch_report_autoescape_off_with_select_autoescape():
    import pytest

    from types import SimpleNamespace

    from toolkit import hookimpl
    from toolkit.plugin.registry import make_plugin_manager
    from toolkit.report.environment import make_environment

    pm, _ = make_plugin_manager()
    pm.register(SimpleNamespace(prepare_jinja2_environment=hookimpl(_autoescape_off)), name="autoescape_off")
    with pytest.raises(ValueError, match="autoescaping off"):
        make_environment(None, pm)


def test_plugin_svg_is_embedded_as_an_inert_image():
    """A deny-list let ``</svg><meta http-equiv=refresh>`` through; the figure is now an <img>."""
    from toolkit.report.environment import figure_markup

    hostile = '<svg xmlns="http://www.w3.org/2000/svg"></svg><meta http-equiv="refresh" content="0;url=https://x.test">'
    html = str(figure_markup("image/svg+xml", hostile.encode(), 'alt "quoted"'))
    assert html.startswith('<img alt="alt &#34;quoted&#34;" src="data:image/svg+xml;base64,')
    assert "<meta" not in html and "<svg" not in html and "refresh" not in html
