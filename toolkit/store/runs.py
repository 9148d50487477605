"""Runs: what each ``tk run`` was asked, what it did per backbone, what it skipped and exported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from toolkit.errors import TkError
from toolkit.lazy import lazy_import
from toolkit.store.connection import Part
from toolkit.store.sql import utcnow

duckdb = lazy_import("duckdb")

FINISHED = "('ok', 'partial')"
"""Statuses of runs that finished: the latest of them is the run commands use by default."""


class RunsReader(Part):
    """Reads the ``runs``, ``run_backbones``, ``skipped_files`` and ``store_secrets`` tables."""

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """One run as a dict (the latest finished one, ok or partial, when ``run_id`` is None)."""
        if run_id is None:
            df = self.db.query_df(f"SELECT * FROM runs WHERE status IN {FINISHED} ORDER BY started_at DESC LIMIT 1")
        else:
            df = self.db.query_df("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            raise TkError(f"no run {run_id!r} in {self.db.path}; list runs with: tk sql \"SELECT run_id, started_at FROM runs\""
                          if run_id else self._no_finished_run())
        row = df.iloc[0].to_dict()
        for key in ("settings", "versions", "warnings"):
            row[key] = json.loads(row[key]) if isinstance(row[key], str) else row[key]
        return row

    def _no_finished_run(self) -> str:
        """Why there is no latest finished run: no runs at all, or only runs that did not finish."""
        latest = self.db.query_df("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")  # stores before m006 lack error
        if latest.empty:
            return f"store {self.db.path} has no runs yet; run `tk run` first"
        run = latest.iloc[0]
        error = run.get("error")
        why = f": {error}" if isinstance(error, str) and error else ""
        return (f"store {self.db.path} has no finished run (the latest, {run['run_id']}, {run['status']}{why}); "
                "fix that and run `tk run` again")

    def report_secret(self) -> bytes:
        """The store's secret that keys the report's patient pseudonyms (``store_secrets``)."""
        try:
            row = self.con.execute("SELECT value FROM store_secrets WHERE name = 'report_pseudonyms'").fetchone()
        except duckdb.CatalogException:
            row = None
        if row is None:
            raise TkError(f"store {self.db.path} predates report pseudonyms; open it once with a writing tk command "
                          "(tk run) to upgrade it, or pass --reveal-ids")
        return bytes.fromhex(row[0])

    def skipped_files(self, run_id: str) -> list[dict[str, Any]]:
        """The files a run could not use: relpath, reason."""
        return self.db.query_df("SELECT relpath, reason FROM skipped_files WHERE run_id = ? ORDER BY relpath",
                                [run_id]).to_dict("records")

    def run_backbones(self, run_id: str, ok_only: bool = False) -> list[dict[str, Any]]:
        """One dict per backbone of a run (every ``run_backbones`` column), by name."""
        where = " AND status = 'ok'" if ok_only else ""
        return self.db.query_df(f"SELECT * FROM run_backbones WHERE run_id = ?{where} ORDER BY backbone",
                                [run_id]).to_dict("records")

    def run_backbone(self, run_id: str, backbone: str) -> dict[str, Any] | None:
        """The ``run_backbones`` row of one backbone that finished in a run, or None."""
        found = [row for row in self.run_backbones(run_id, ok_only=True) if row["backbone"] == backbone]
        return found[0] if found else None


class Runs(RunsReader):
    """Records runs: what each was asked, what it did per backbone, what it skipped and exported."""

    def start_run(self, run_id: str, command: str, settings: dict[str, Any], versions: dict[str, str]) -> None:
        self.con.execute("INSERT INTO runs (run_id, started_at, status, pid, command, settings, versions, warnings) "
                         "VALUES (?, ?, 'running', ?, ?, ?, ?, '[]')",
                         [run_id, utcnow(), os.getpid(), command, json.dumps(settings, default=str),
                          json.dumps(versions)])

    def update_run(self, run_id: str, **fields: Any) -> None:
        columns = {"finished_at", "status", "data_root", "source", "dataset_fingerprint", "n_images",
                   "n_skipped", "warnings", "error"}
        unknown = set(fields) - columns
        if unknown:
            raise ValueError(f"unknown run fields {unknown}")
        values = [json.dumps(v) if k == "warnings" else v for k, v in fields.items()]
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.con.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*values, run_id])

    def mark_interrupted_runs(self) -> None:
        """Mark runs left ``running`` by a process that is gone as ``interrupted``."""
        for run_id, pid in self.con.execute("SELECT run_id, pid FROM runs WHERE status = 'running'").fetchall():
            if pid != os.getpid() and not _pid_alive(pid):
                self.con.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])

    def record_export(self, run_id: str, exporter: str, path: Path) -> None:
        """Remember a file an exporter wrote for a run."""
        self.con.execute("INSERT INTO exports VALUES (?, ?, ?, current_timestamp)", [run_id, exporter, str(path)])

    def record_skipped(self, run_id: str, relpath: str, reason: str) -> None:
        self.con.execute("INSERT INTO skipped_files VALUES (?, ?, ?)", [run_id, relpath, reason])

    def record_backbone(self, run_id: str, backbone: str, **fields: Any) -> None:
        names = ["run_id", "backbone", *fields]
        placeholders = ", ".join("?" for _ in names)
        self.con.execute(f"INSERT OR REPLACE INTO run_backbones ({', '.join(names)}) VALUES ({placeholders})",
                         [run_id, backbone, *fields.values()])


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
