"""The analysis runner: declared dependencies, typed settings and the cache key."""

from __future__ import annotations

import importlib
import json
import random
import re
import sys
import textwrap
from dataclasses import dataclass, field

import pandas as pd
import pytest

from tests.conftest import tk
from toolkit import Analysis, Needs, Setting, SkipAnalysis, Table, setting
from toolkit.analysis.cache import cache_key, code_fingerprint
from toolkit.analysis.runner import run_analyses, with_dependencies
from toolkit.errors import PluginError, TkError
from toolkit.plugin.registry import Register, load_registry
from toolkit.plugin.settings import declared, parse_assignments, resolved, settings_record
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
    assert store.results.result_table(run.run_id, "reader", backbone="alpha")["doubled"].tolist() == [2.0, 4.0]

    def broken(context):
        raise RuntimeError("boom")

    failing = Analysis(name="producer", run=broken)
    outcomes = run_analyses(store, run.run_id, run.sets, [failing, READER], seed=1)  # not the cached key
    assert [(o.analysis, o.status) for o in outcomes] == [("producer", "failed"), ("reader", "skipped")]
    assert "needs the results of producer: producer failed (RuntimeError: boom" in outcomes[1].message
    findings = store.query_df("SELECT message FROM results_findings WHERE analysis = 'reader'")["message"].tolist()
    assert findings and findings[0].startswith("reader was skipped: it needs the results of producer")


@dataclass(frozen=True)
class ProbeLike:
    c: float = setting(0.1, "inverse regularisation")
    bootstrap: int = setting(1000)


SETTABLE = Analysis(name="probe", run=lambda c: [], settings=ProbeLike)


def test_settings_parse_typed_values_and_refuse_unknown_keys_with_the_valid_ones():
    assert parse_assignments(["probe.c=0.5", "probe.bootstrap=10"], {"probe": SETTABLE}) == {
        "probe": {"c": 0.5, "bootstrap": 10}}
    assert resolved(SETTABLE, {"probe": {"c": 0.5}}) == ProbeLike(c=0.5, bootstrap=1000)
    assert settings_record(resolved(SETTABLE, {"probe": {"c": 0.5}})) == {"c": 0.5, "bootstrap": 1000}
    with pytest.raises(TkError, match=r"unknown setting 'probe.nope'; valid keys: probe.c, probe.bootstrap$"):
        parse_assignments(["probe.nope=1"], {"probe": SETTABLE})
    with pytest.raises(TkError, match="probe.bootstrap=many: expected a whole number"):
        parse_assignments(["probe.bootstrap=many"], {"probe": SETTABLE})
    with pytest.raises(TkError, match="unknown setting 'probe'"):
        parse_assignments(["probe=1"], {"probe": SETTABLE})
    choice = Setting("scale", str, "raw", choices=("raw", "standardised"))
    with pytest.raises(ValueError, match="expected one of raw, standardised"):
        choice.parse("log")


@dataclass(frozen=True)
class ListSettings:
    names: tuple[str, ...] = setting(("subtype", "magnification"), "grouping columns")
    ks: list[int] = setting([2], "cluster counts")
    k: tuple[int, ...] = setting((), "cluster counts; auto: chosen from the data", empty="auto")
    scale: str = setting("raw", choices=("raw", "standardised"))


def _echo_settings(context):
    return [Table("main", pd.DataFrame({"settings": [repr(context.settings)]}))]


LISTER = Analysis(name="lister", run=_echo_settings, settings=ListSettings)


def test_a_list_setting_arrives_as_a_list_of_typed_elements():
    chosen = parse_assignments(["lister.names=subtype, grade", "lister.ks=3,2", "lister.k=4"], {"lister": LISTER})
    assert chosen == {"lister": {"names": ("subtype", "grade"), "ks": [3, 2], "k": (4,)}}
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 4})
    run_analyses(store, run.run_id, run.sets, [LISTER], chosen)
    echoed = store.results.result_table(run.run_id, "lister", "main", "alpha")["settings"].iloc[0]
    assert echoed == "ListSettings(names=('subtype', 'grade'), ks=[3, 2], k=(4,), scale='raw')"
    assert parse_assignments(["lister.k=auto", "lister.names="], {"lister": LISTER}) == {"lister": {"k": (), "names": ()}}
    assert settings_record(resolved(LISTER, chosen)) == {"names": ["subtype", "grade"], "ks": [3, 2], "k": [4],
                                                         "scale": "raw"}


@pytest.mark.parametrize("assignment, expected", [
    ("lister.ks=2,x", "--set lister.ks=2,x: expected whole numbers separated by commas (list[int]); 'x' is not one"),
    ("lister.k=", "--set lister.k=: expected whole numbers separated by commas (list[int]), or auto"),
    ("lister.scale=log", "--set lister.scale=log: expected one of raw, standardised"),
])
def test_a_bad_list_or_choice_value_names_the_key_and_what_is_expected(assignment, expected):
    with pytest.raises(TkError) as refused:
        parse_assignments([assignment], {"lister": LISTER})
    assert str(refused.value) == expected


def test_tk_run_refuses_a_badly_typed_setting_in_one_line_naming_key_and_type(tmp_path, capsys):
    from toolkit.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path), "--set", "probe.bootstrap=many", "--store", str(tmp_path / "tk.duckdb")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 1 and len(lines) == 1
    assert "--set probe.bootstrap=many: expected a whole number (int)" in lines[0]
    assert not (tmp_path / "tk.duckdb").exists()


def test_an_analysis_reading_an_undeclared_setting_fails_naming_it_and_the_declared_ones():
    reader = Analysis(name="careless", run=lambda context: [Table("main", pd.DataFrame({"n": [context.settings.top_k]}))],
                      settings=ProbeLike)
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 4})
    outcome, = run_analyses(store, run.run_id, run.sets, [reader])
    assert outcome.status == "failed"
    assert outcome.message.startswith("analysis 'careless' reads setting 'top_k', which it does not declare "
                                      "(declared: c, bootstrap); add it to ProbeLike with setting(DEFAULT, HELP) "
                                      "(at test_analysis_runner.py:")
    bare = Analysis(name="bare", run=reader.run)
    outcome, = run_analyses(store, run.run_id, run.sets, [bare])
    assert "reads setting 'top_k', which it does not declare (declared: none)" in outcome.message


def test_the_cache_key_of_unchanged_settings_is_unchanged():
    probe, anova = (load_registry().analyses[name] for name in ("probe", "anova"))
    record = settings_record(resolved(probe, {"probe": {"c": 0.5}}))
    as_before = {"c": 0.5, "bootstrap": 1000, "protocol": "patient-cv"}  # the dict a run records and keys on
    assert record == as_before
    assert cache_key(probe, "data", record, 0) == cache_key(probe, "data", as_before, 0)
    keyed = lambda text: cache_key(anova, "data", settings_record(resolved(  # noqa: E731
        anova, parse_assignments([f"anova.factors={text}"], {"anova": anova}))), 0)
    assert keyed("subtype,grade") == keyed(" subtype , grade ") != keyed("grade,subtype")
    assert keyed("subtype,magnification") == cache_key(anova, "data", settings_record(resolved(anova, {})), 0)


def test_tk_plugins_lists_list_settings_as_they_are_typed_with_set(capsys, monkeypatch):
    from toolkit.cli import main

    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    with pytest.raises(SystemExit):
        main(["plugins", "--json"])
    listed = {s["key"]: s for row in json.loads(capsys.readouterr().out) for s in row.get("settings", [])}
    assert listed["anova.factors"]["type"] == "list[str]"
    assert listed["anova.factors"]["default"] == "subtype,magnification"
    assert (listed["clusters.k"]["type"], listed["clusters.k"]["default"]) == ("list[int]", "auto")
    assert (listed["probe.bootstrap"]["type"], listed["probe.bootstrap"]["default"]) == ("int", 1000)
    with pytest.raises(SystemExit):
        main(["plugins"])
    row = next(line for line in capsys.readouterr().out.splitlines() if "anova.factors" in line)
    assert "list[str]" in row and "subtype,magnification" in row and "[" not in row.replace("list[str]", "")
    spec = next(s for s in declared(ListSettings) if s.name == "names")
    assert spec.describe() == "names=subtype,magnification (list[str]): grouping columns"


def test_tuple_of_setting_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'legacy' declares its settings as a tuple of Setting"):
        legacy = Analysis(name="legacy", run=lambda c: [], settings=(Setting("c", float, 0.1, "inverse regularisation"),
                                                                      Setting("bootstrap", int, 1000)))
    chosen = parse_assignments(["legacy.bootstrap=10"], {"legacy": legacy})
    settings = resolved(legacy, chosen)
    assert (settings.c, settings.bootstrap) == (0.1, 10)
    assert (settings.get("c", 9.0), settings.get("nope", 9.0), settings["bootstrap"]) == (0.1, 9.0, 10)
    assert [s.describe() for s in declared(legacy.settings)] == ["c=0.1 (float): inverse regularisation",
                                                                 "bootstrap=1000 (int)"]


def test_settings_that_cannot_be_parsed_are_refused_at_registration():
    @dataclass
    class Unfrozen:
        top_k: int = 5

    @dataclass(frozen=True)
    class Untyped:
        groups: set[str] = field(default_factory=set)

    @dataclass(frozen=True)
    class Undefaulted:
        top_k: int

    @dataclass(frozen=True)
    class Misfit:
        top_k: int = setting("five")

    register = Register(Analysis)
    for settings, reason in ((Unfrozen, "must be frozen"), (Untyped, "setting 'groups': type set[str] is not supported"),
                             (Undefaulted, "setting 'top_k' has no default"), (Misfit, "default 'five' is not a whole number"),
                             (dict, "is not a dataclass")):
        with pytest.raises(PluginError, match=f"analysis 'odd': settings .*{re.escape(reason)}"):
            register(Analysis(name="odd", run=lambda c: [], settings=settings))


def test_a_setting_changes_the_stored_probe_results_and_the_cache_key():
    probe = load_registry().analyses["probe"]
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 8})
    first = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50}})
    default = store.results.result_table(run.run_id, "probe", "predictions", "alpha")
    second = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50, "c": 0.0001}})
    assert first[0].status == second[0].status == "ok" and second[0].reused_from is None
    changed = store.results.result_table(run.run_id, "probe", "predictions", "alpha")
    assert (default["probability"] - changed["probability"]).abs().max() > 0.01
    again = run_analyses(store, run.run_id, run.sets, [probe], {"probe": {"bootstrap": 50, "c": 0.0001}})
    assert again[0].reused_from == run.run_id


def test_tk_run_refuses_an_unknown_setting_in_one_line(tmp_path):
    result = tk("run", tmp_path, "--set", "probe.nope=1", "--store", tmp_path / "tk.duckdb")
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


PROBE_PREDICTIONS = '''
import pandas as pd
from toolkit import Analysis, Table, hookimpl


def run(context):
    return [Table("main", pd.DataFrame({"mine": [context.seed] * 3}))]


@hookimpl
def register_analyses(register):
    register(Analysis(name="probe_predictions", run=run))
'''


def test_an_analysis_named_like_another_analysis_table_keeps_its_own_rows_when_either_is_rerun(tmp_path):
    """``probe``'s table ``predictions`` and an analysis named ``probe_predictions`` would both be
    ``results_probe_predictions``: each owns a table of its own, and re-running one deletes nothing of the other."""
    plugin = tmp_path / "probe_predictions.py"
    plugin.write_text(PROBE_PREDICTIONS)
    registry = load_registry([str(plugin)])
    both = [registry.analyses["probe"], registry.analyses["probe_predictions"]]
    store = Store.open(":memory:")
    run = synthetic_run(store, backbones={"alpha": 8})
    run_analyses(store, run.run_id, run.sets, both, registry=registry)
    n_images = len(store.results.result_table(run.run_id, "probe", "predictions", "alpha"))
    for seed, analysis in enumerate(both + both, start=1):  # another seed: recomputed and stored again, not reused
        run_analyses(store, run.run_id, run.sets, [analysis], seed=seed, registry=registry)
        predictions = store.results.result_table(run.run_id, "probe", "predictions", "alpha")
        mine = store.results.result_table(run.run_id, "probe_predictions", backbone="alpha")
        assert len(predictions) == n_images > 3 and "mine" not in predictions.columns
        assert list(mine.columns) == ["mine"] and len(mine) == 3
    assert store.results.sql_name("probe", "predictions") == "results_probe_predictions"
    assert store.results.sql_name("probe_predictions") == "results_probe_predictions_2"
