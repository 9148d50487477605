"""The analysis runner: declared dependencies, typed settings and the cache key."""

from __future__ import annotations

import importlib
import random
import sys
import textwrap

import pandas as pd
import pytest

from tests.conftest import run_tk
from toolkit import Analysis, Needs, Setting, SkipAnalysis, Table
from toolkit.analysis.cache import cache_key, code_fingerprint
from toolkit.analysis.runner import run_analyses, with_dependencies
from toolkit.errors import TkError
from toolkit.plugin.registry import load_registry
from toolkit.plugin.settings import parse_assignments, resolved
from toolkit.store import Store
from toolkit.testing import synthetic_run


def _reader(context):
    upstream = context.results("producer")
    if upstream.empty:
        raise SkipAnalysis("no producer results")
    return [Table("main", upstream.assign(doubled=upstream["value"] * 2))]


PRODUCER = Analysis(name="producer", run=lambda c: [Table("main", pd.DataFrame({"value": [1.0, 2.0]}))])
READER = Analysis(name="reader", run=_reader, needs=Needs(analyses=("producer",)))


def test_dependencies_come_first_whatever_the_plugin_order():
    registry = load_registry()
    available = dict(registry.analyses)
    names = list(available)
    orders = set()
    for seed in range(5):
        random.Random(seed).shuffle(names)
        shuffled = {name: available[name] for name in names}
        ordered = [a.name for a in with_dependencies(list(shuffled.values()), shuffled)]
        assert ordered.index("probe") < ordered.index("gradcam")
        orders.add(tuple(ordered))
    assert len(orders) == 1, "the run order must not depend on the order plugins were loaded in"


def test_selecting_a_dependant_adds_what_it_reads():
    available = load_registry().analyses
    assert [a.name for a in with_dependencies([available["gradcam"]], available)] == ["probe", "gradcam"]
    with pytest.raises(TkError, match="reads the results of 'producer', which no loaded plugin registers"):
        with_dependencies([READER], {"reader": READER})


def test_dependant_reads_its_dependency_and_is_skipped_when_it_failed():
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 8})
    outcomes = run_analyses(store, run.run_id, run.sets, with_dependencies([READER], {"producer": PRODUCER, "reader": READER}))
    assert [(o.analysis, o.status) for o in outcomes] == [("producer", "ok"), ("reader", "ok")]
    assert store.result_table(run.run_id, "reader", backbone="alpha")["doubled"].tolist() == [2.0, 4.0]

    def broken(context):
        raise RuntimeError("boom")

    failing = Analysis(name="producer", run=broken)
    outcomes = run_analyses(store, run.run_id, run.sets, [failing, READER], seed=1)  # not the cached key
    assert [(o.analysis, o.status) for o in outcomes] == [("producer", "failed"), ("reader", "skipped")]
    assert "needs the results of producer: producer failed (RuntimeError: boom" in outcomes[1].message
    findings = store.query_df("SELECT message FROM results_findings WHERE analysis = 'reader'")["message"].tolist()
    assert findings and findings[0].startswith("reader was skipped: it needs the results of producer")


PROBE_SETTINGS = [Setting("c", float, 0.1, "inverse regularisation"), Setting("bootstrap", int, 1000)]
SETTABLE = Analysis(name="probe", run=lambda c: [], settings=tuple(PROBE_SETTINGS))


def test_settings_parse_typed_values_and_refuse_unknown_keys_with_the_valid_ones():
    assert parse_assignments(["probe.c=0.5", "probe.bootstrap=10"], {"probe": SETTABLE}) == {
        "probe": {"c": 0.5, "bootstrap": 10}}
    assert resolved(SETTABLE, {"probe": {"c": 0.5}}) == {"c": 0.5, "bootstrap": 1000}
    with pytest.raises(TkError, match=r"unknown setting 'probe.nope'; valid keys: probe.c, probe.bootstrap$"):
        parse_assignments(["probe.nope=1"], {"probe": SETTABLE})
    with pytest.raises(TkError, match="probe.bootstrap=many: expected a whole number"):
        parse_assignments(["probe.bootstrap=many"], {"probe": SETTABLE})
    with pytest.raises(TkError, match="unknown setting 'probe'"):
        parse_assignments(["probe=1"], {"probe": SETTABLE})
    choice = Setting("scale", str, "raw", choices=("raw", "standardised"))
    with pytest.raises(ValueError, match="expected one of raw, standardised"):
        choice.parse("log")


def test_a_setting_changes_the_stored_probe_results_and_the_cache_key():
    probe = load_registry().analyses["probe"]
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 8})
    first = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50}})
    default = store.result_table(run.run_id, "probe", "predictions", "alpha")
    second = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50, "c": 0.0001}})
    assert first[0].status == second[0].status == "ok" and second[0].reused_from is None
    changed = store.result_table(run.run_id, "probe", "predictions", "alpha")
    assert (default["probability"] - changed["probability"]).abs().max() > 0.01
    again = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50, "c": 0.0001}})
    assert again[0].reused_from == run.run_id


def test_tk_run_refuses_an_unknown_setting_in_one_line(tmp_path):
    result = run_tk("run", tmp_path, "--set", "probe.nope=1", "--store", tmp_path / "tk.duckdb")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown setting 'probe.nope'; valid keys:" in lines[0]
    assert "probe.c" in lines[0] and "ttest.grouping" in lines[0]
    assert not (tmp_path / "tk.duckdb").exists()


def test_editing_a_helper_module_changes_the_cache_key(tmp_path, monkeypatch):
    package = tmp_path / "lab_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def scale():\n    return 1.0\n")
    (package / "analysis.py").write_text(textwrap.dedent("""
        from lab_plugin.helpers import scale

        def run(context):
            return []
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("lab_plugin.analysis")
    analysis = Analysis(name="lab", run=module.run)
    before = code_fingerprint(analysis)
    assert code_fingerprint(analysis) == before
    (package / "helpers.py").write_text("def scale():\n    return 2.0  # edited\n")
    assert code_fingerprint(analysis) != before
    assert cache_key(analysis, "data", {}, 0) != cache_key(analysis, "data", {"k": 1}, 0)
    for name in ("lab_plugin", "lab_plugin.helpers", "lab_plugin.analysis"):
        sys.modules.pop(name, None)


def test_an_upstream_change_invalidates_its_dependants():
    assert cache_key(READER, "data", {}, 0, ["producer-key-1"]) != cache_key(READER, "data", {}, 0, ["producer-key-2"])



def test_an_analysis_that_needs_patients_says_how_to_give_patient_ids():
    from toolkit.analysis.runner import unmet_need

    metadata = pd.DataFrame({"label": ["benign", "malignant"] * 5, "patient_id": [None] * 10})
    message = unmet_need(Needs(labels=True, patients=True), metadata)
    assert message.startswith("needs a patient id for every image; 10 have none")
    assert "CSV manifest that has a patient_id column" in message and "--patient-from REGEX" in message
