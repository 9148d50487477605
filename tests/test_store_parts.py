"""The store's parts: plugins read through a reader with no method that writes, exporters hand their
rows back for core to write, core table names come from the migrations, and a migration that fails
leaves the store as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from toolkit import Exporter, Table
from toolkit.errors import PluginError, TkError
from toolkit.plugin.results import CORE_RESULT_TABLES
from toolkit.plugin.types import AnalysisContext, ExportContext
from toolkit.run.exports import export_into
from toolkit.store import Store, StoreReader, TableSpec, migrations
from toolkit.store.migrations import core_tables
from toolkit.testing import synthetic_run

PARTS = ("images", "clinical", "embeddings", "runs", "results", "tables")
NOTES = TableSpec("export_notes", {"run_id": "VARCHAR", "note": "VARCHAR"})


def _public(part: object) -> set[str]:
    return {name for name in dir(part) if not name.startswith("_") and callable(getattr(part, name))}


def test_plugins_get_a_reader_that_has_no_method_that_writes(tmp_path):
    with Store.open(":memory:") as store:
        run = synthetic_run(store, backbones={"alpha": 4})
        context = ExportContext(run.run_id, store, registry=object())
        analysis = AnalysisContext(run.run_id, "alpha", None, None, {}, store)
        reader = context.store
        assert isinstance(reader, StoreReader) and isinstance(analysis.store, StoreReader)
        writes = set().union(*(_public(getattr(store, part)) - _public(getattr(reader, part)) for part in PARTS))
        assert {"save_results", "copy_results", "replace_rows", "insert_rows", "update_rows", "ensure_table",
                "start_run", "update_run", "record_backbone", "write_batch", "ensure_set", "add_images",
                "record_clinical"} <= writes
        assert not hasattr(reader, "shards") and not hasattr(reader, "con")
        for part in PARTS:
            assert not _public(getattr(reader, part)) & writes, part
        with pytest.raises(AttributeError, match="read-only to plugins"):
            reader.save_results
        with pytest.raises(AttributeError, match="use store.runs.run_backbones"):
            reader.run_backbones
        assert reader.runs.run(run.run_id)["run_id"] == run.run_id
        assert sorted(row["backbone"] for row in reader.runs.run_backbones(run.run_id)) == ["alpha"]


def _noting(table: TableSpec):
    def export(context: ExportContext, out_dir: Path) -> list[Path]:
        context.replace_rows(table, [{"run_id": context.run_id, "note": "exported"}], where={"run_id": context.run_id})
        return []
    return export


def test_an_exporter_hands_its_rows_back_and_core_writes_them_after_it_returns(tmp_path):
    with Store.open(tmp_path / "tk.duckdb") as store:
        run = synthetic_run(store, backbones={"alpha": 4})
        context = ExportContext(run.run_id, store, registry=object())
        declared = Exporter(name="noter", export=_noting(NOTES), tables=(NOTES,))
        for _ in range(2):  # rows matching `where` are replaced, not added to
            assert export_into(declared, context, tmp_path / "out", store) == []
        assert store.tables.rows(NOTES).to_dict("records") == [{"run_id": run.run_id, "note": "exported"}]
        undeclared = Exporter(name="sneaky", export=_noting(TableSpec("sneaky_notes", NOTES.columns)))
        with pytest.raises(PluginError, match="exporter sneaky handed rows for sneaky_notes, which it does not "
                                              r"declare; list the table in Exporter\(tables=...\)"):
            export_into(undeclared, context, tmp_path / "out", store)
        assert not store.table_exists("sneaky_notes")
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:  # tk report: re-renders, stores nothing
        context = ExportContext(run.run_id, store, registry=object())
        with pytest.raises(TkError, match="exporter noter handed rows for export_notes, but store .* is open read-only"):
            export_into(declared, context, tmp_path / "again", store)


def test_core_table_names_come_from_the_migrations_and_no_declared_table_takes_one():
    assert {"images", "ingested_shards", "result_table_names", "clinical", "_migrations"} <= core_tables()
    assert set(CORE_RESULT_TABLES) == {name for name in core_tables() if name.startswith("results_")}
    with Store.open(":memory:") as store:
        before = store.query_df("DESCRIBE ingested_shards")
        for name in ("ingested_shards", "store_secrets", "clinical"):
            spec = TableSpec(name, {"x": "INTEGER"})
            with pytest.raises(PluginError, match=f"table name '{name}' is taken by tk's core"):
                store.tables.ensure_table(spec)
            with pytest.raises(PluginError, match=f"table name '{name}' is taken by tk's core"):
                store.reader().tables.rows(spec)
        assert store.query_df("DESCRIBE ingested_shards").equals(before)


def _half_done(con) -> None:
    con.execute("CREATE TABLE half_done (x INTEGER)")
    con.execute("ALTER TABLE runs ADD COLUMN half_done INTEGER")
    raise RuntimeError("the disk is full\nand a second line")


def test_a_failing_migration_rolls_back_and_leaves_the_store_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "tk.duckdb"
    with Store.open(path) as store:
        synthetic_run(store, backbones={"alpha": 4})
    before = path.read_bytes()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, _half_done])
    with pytest.raises(TkError) as caught:
        Store.open(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"store {path}: schema migration _half_done failed "
                                                      "(the disk is full) and was rolled back"), message
    assert path.read_bytes() == before and not path.with_name("tk.duckdb.wal").exists()
    fresh = tmp_path / "new.duckdb"
    with pytest.raises(TkError, match="_half_done failed"):
        Store.open(fresh)
    assert not fresh.exists(), "a store the failed open created is removed"
    monkeypatch.undo()
    with Store.open(path, read_only=True) as store:
        assert not store.table_exists("half_done") and "half_done" not in store.query_df("DESCRIBE runs")["column_name"].tolist()
        assert store.stand_ins == []


def test_result_tables_stored_before_their_owners_were_recorded_keep_their_names_and_rows(tmp_path):
    path = tmp_path / "tk.duckdb"
    with Store.open(path) as store:
        run = synthetic_run(store, backbones={"alpha": 4})
        store.results.save_results(run.run_id, "probe", "alpha", "ok", "", 0.0,
                                   [Table("predictions", pd.DataFrame({"p": [0.5, 0.25]}))])
        store.results.save_results(run.run_id, "probe_predictions", "alpha", "ok", "", 0.0,
                                   [Table("main", pd.DataFrame({"mine": [1]}))])
        # a store written before m012: no owners recorded, both analyses listed under one table name
        store.con.execute("DROP TABLE result_table_names")
        store.con.execute("DELETE FROM _migrations WHERE name = 'm012_result_table_names'")
        store.con.execute("UPDATE result_tables SET table_name = 'results_probe_predictions' "
                          "WHERE analysis = 'probe_predictions'")
    with Store.open(path, read_only=True) as store:
        assert store.stand_ins == ["m012_result_table_names"]
        assert store.results.sql_name("probe", "predictions") == "results_probe_predictions"
    with Store.open(path) as store:
        assert store.results.sql_name("probe", "predictions") == "results_probe_predictions"
        assert store.results.sql_name("probe_predictions") is None, "the first to store in a shared table owns it"
        store.results.save_results(run.run_id, "probe_predictions", "alpha", "ok", "", 0.0,
                                   [Table("main", pd.DataFrame({"mine": [2]}))])
        assert store.results.result_table(run.run_id, "probe", "predictions", "alpha")["p"].tolist() == [0.5, 0.25]
        assert store.results.result_table(run.run_id, "probe_predictions", backbone="alpha")["mine"].tolist() == [2]
