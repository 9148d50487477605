"""Analysis results: each analysis' tables, figures and findings per run and backbone, its status,
and the cache that lets a later run reuse them.

Each (analysis, table) pair owns one ``results_*`` table, recorded in ``result_table_names``
(``m012_result_table_names``): ``results_<analysis>`` for its ``main`` table, else
``results_<analysis>_<table>``, unless another pair already owns that name (analysis ``probe`` with
table ``predictions`` and an analysis named ``probe_predictions``), in which case the newcomer gets
the first free ``<name>_2``, ``<name>_3``... Rows are only ever deleted from tables the analysis owns.
"""

from __future__ import annotations

import json
from typing import Any

from toolkit.errors import PluginError
from toolkit.lazy import lazy_import
from toolkit.plugin.results import Figure, Finding, Table, table_name
from toolkit.store.connection import Part
from toolkit.store.migrations import core_tables
from toolkit.store.sql import arrow_view, identifier

pa = lazy_import("pyarrow")
pd = lazy_import("pandas")


class ResultsReader(Part):
    """Reads ``analysis_runs``, ``result_tables``, ``results_findings``, ``results_figures`` and every
    analysis' result tables."""

    def sql_name(self, analysis: str, table: str = "main") -> str | None:
        """The SQL name of ``analysis``' result table ``table``, or None when it never stored one."""
        row = self.db.one("SELECT table_name FROM result_table_names WHERE analysis = ? AND result = ?",
                          [analysis, identifier(table)])
        return row[0] if row else None

    def result_table(self, run_id: str, analysis: str, table: str = "main", backbone: str = "") -> pd.DataFrame:
        """A stored result table of one analysis for a run and backbone (``""``: all backbones at
        once), without its run_id and backbone columns; empty when the analysis stored none."""
        name = self.sql_name(analysis, table)
        if name is None:
            return pd.DataFrame()
        return self.db.query_df(f"SELECT * EXCLUDE (run_id, backbone) FROM {name} WHERE run_id = ? AND backbone = ?",
                                [run_id, backbone])

    def run_results(self, run_id: str, analysis: str, table: str = "main") -> pd.DataFrame:
        """A result table of one analysis for every backbone of a run (with the backbone column,
        ``""`` for analyses over all backbones); empty when the analysis stored none."""
        name = self.sql_name(analysis, table)
        if name is None:
            return pd.DataFrame()
        return self.db.query_df(f"SELECT * EXCLUDE (run_id) FROM {name} WHERE run_id = ?", [run_id])

    def reusable_results(self, cache_key: str) -> str | None:
        """The latest run whose analysis finished (ok or skipped) with this cache key."""
        row = self.db.one("SELECT a.run_id FROM analysis_runs a JOIN runs r USING (run_id) WHERE a.cache_key = ? "
                          "AND a.status IN ('ok', 'skipped') ORDER BY r.started_at DESC LIMIT 1", [cache_key])
        return row[0] if row else None

    def run_analyses(self, run_id: str) -> list[dict[str, Any]]:
        """How every analysis went in a run: analysis, backbone, status, message, seconds."""
        return self.db.query_df("SELECT analysis, backbone, status, message, seconds FROM analysis_runs "
                                "WHERE run_id = ?", [run_id]).to_dict("records")

    def run_findings(self, run_id: str, analysis: str | None = None) -> list[dict[str, Any]]:
        """Every finding of a run (of one analysis, when given): backbone, analysis, severity, message, detail."""
        sql = "SELECT backbone, analysis, severity, message, detail FROM results_findings WHERE run_id = ?"
        params: list[Any] = [run_id]
        if analysis is not None:
            sql, params = sql + " AND analysis = ?", [run_id, analysis]
        return self.db.query_df(sql, params).to_dict("records")

    def run_figures(self, run_id: str) -> list[dict[str, Any]]:
        """Every figure of a run, by name: backbone, analysis, name, mime, content, alt, caption."""
        return self.db.query_df("SELECT backbone, analysis, name, mime, content, alt, caption FROM results_figures "
                                "WHERE run_id = ? ORDER BY name", [run_id]).to_dict("records")

    def run_result_tables(self, run_id: str, max_rows: int) -> list[dict[str, Any]]:
        """Every result table of a run: backbone, analysis, table_name, description, its columns, its
        first ``max_rows`` rows and its number of rows."""
        tables = []
        for entry in self.db.query_df("SELECT * FROM result_tables WHERE run_id = ? ORDER BY analysis, table_name",
                                      [run_id]).to_dict("records"):
            where = "WHERE run_id = ? AND backbone = ?"
            params = [run_id, entry["backbone"]]
            frame = self.db.query_df(f"SELECT * EXCLUDE (run_id, backbone) FROM {entry['table_name']} {where} LIMIT ?",
                                     [*params, max_rows])
            n_rows = self.db.one(f"SELECT count(*) FROM {entry['table_name']} {where}", params)[0]
            tables.append({**entry, "frame": frame, "n_rows": int(n_rows)})
        return tables

    def _owned_tables(self, run_id: str, analysis: str, backbone: str) -> list[str]:
        """The result tables ``analysis`` stored for a run and backbone that it owns (a table another
        analysis owns, shared in a store written before ``m012``, is never its to change)."""
        return [row[0] for row in self.con.execute(
            "SELECT DISTINCT t.table_name FROM result_tables t JOIN result_table_names n "
            "ON n.table_name = t.table_name AND n.analysis = t.analysis "
            "WHERE t.run_id = ? AND t.analysis = ? AND t.backbone = ?", [run_id, analysis, backbone]).fetchall()]


class Results(ResultsReader):
    """Stores what analyses return (the runner calls it; analyses only return results)."""

    def save_results(self, run_id: str, analysis: str, backbone: str, status: str, message: str,
                     seconds: float, results: list[Table | Figure | Finding], cache_key: str | None = None) -> None:
        """Replace one analysis' results for a run and backbone, in one transaction."""
        with self.db.transaction():
            self._delete_results(run_id, analysis, backbone)
            for item in results:
                if isinstance(item, Table):
                    self._save_table(run_id, analysis, backbone, item)
                elif isinstance(item, Figure):
                    content = item.content.encode() if isinstance(item.content, str) else item.content
                    self.con.execute("INSERT INTO results_figures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     [run_id, backbone, analysis, item.name, item.mime, content, item.alt, item.caption])
                else:
                    self.con.execute("INSERT INTO results_findings VALUES (?, ?, ?, ?, ?, ?)",
                                     [run_id, backbone, analysis, item.severity, item.message,
                                      json.dumps(item.detail, default=str)])
            self.con.execute("INSERT INTO analysis_runs (run_id, analysis, backbone, status, message, seconds, cache_key) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", [run_id, analysis, backbone, status, message, seconds, cache_key])

    def copy_results(self, source_run: str, run_id: str, analysis: str, backbone: str) -> tuple[str, str, float]:
        """Copy one analysis' stored results from ``source_run`` to ``run_id``; returns (status, message, seconds)."""
        key = [source_run, analysis, backbone]
        if source_run == run_id:  # already this run's results: nothing to copy
            return self.db.one("SELECT status, message, seconds FROM analysis_runs WHERE run_id = ? AND analysis = ? "
                               "AND backbone = ?", key)
        with self.db.transaction():
            self._delete_results(run_id, analysis, backbone)
            for name in self._owned_tables(source_run, analysis, backbone):
                self.con.execute(f"INSERT INTO {name} SELECT * REPLACE (?::VARCHAR AS run_id) FROM {name} "
                                 "WHERE run_id = ? AND backbone = ?", [run_id, source_run, backbone])
            for table in ("result_tables", "results_figures", "results_findings", "analysis_runs"):
                self.con.execute(f"INSERT INTO {table} SELECT * REPLACE (?::VARCHAR AS run_id) FROM {table} "
                                 "WHERE run_id = ? AND analysis = ? AND backbone = ?", [run_id, *key])
        status, message, seconds = self.db.one("SELECT status, message, seconds FROM analysis_runs WHERE run_id = ? "
                                               "AND analysis = ? AND backbone = ?", [run_id, analysis, backbone])
        return status, message, seconds

    def _delete_results(self, run_id: str, analysis: str, backbone: str) -> None:
        for name in self._owned_tables(run_id, analysis, backbone):
            self.con.execute(f"DELETE FROM {name} WHERE run_id = ? AND backbone = ?", [run_id, backbone])
        for table in ("result_tables", "results_figures", "results_findings", "analysis_runs"):
            self.con.execute(f"DELETE FROM {table} WHERE run_id = ? AND analysis = ? AND backbone = ?",
                             [run_id, analysis, backbone])

    def _claim(self, analysis: str, table: str) -> str:
        """The table ``analysis``' result ``table`` is stored in: the one it owns, or a name no other
        (analysis, table) pair, core table or other table of the store has, recorded as its own."""
        owned = self.sql_name(analysis, table)
        if owned is not None:
            return owned
        wanted = table_name(identifier(analysis), identifier(table))
        if wanted in core_tables():
            raise PluginError(f"analysis {analysis!r} would store its table {table!r} in tk's core table {wanted}; "
                              "rename the analysis")
        name, n = wanted, 1
        while self.db.table_exists(name) or self.db.one("SELECT 1 FROM result_table_names WHERE table_name = ?", [name]):
            n += 1
            name = f"{wanted}_{n}"
        self.con.execute("INSERT INTO result_table_names VALUES (?, ?, ?)", [name, analysis, identifier(table)])
        return name

    def _save_table(self, run_id: str, analysis: str, backbone: str, table: Table) -> None:
        """Append a result table to the table its (analysis, name) pair owns, adding new columns."""
        name = self._claim(analysis, table.name)
        frame = table.data.copy()
        frame.columns = [identifier(str(c)) for c in frame.columns]
        frame.insert(0, "backbone", backbone)
        frame.insert(0, "run_id", run_id)
        with arrow_view(self.con, pa.Table.from_pandas(frame, preserve_index=False)) as result:
            if not self.db.table_exists(name):
                self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM {result} LIMIT 0")
            existing = {r[0] for r in self.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall()}
            for column, dtype in self.con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {result})").fetchall():
                if column not in existing:
                    self.con.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {dtype}')
            self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {result}")
        self.con.execute("INSERT INTO result_tables VALUES (?, ?, ?, ?, ?)",
                         [run_id, backbone, analysis, name, table.description])

