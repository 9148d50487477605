"""The DuckDB store: schema, migrations, batched Arrow writes and numpy reads.

One file holds every image, embedding set, run and result. Embeddings live in one table per
backbone, weights and precision (``emb_<backbone>__<weights>[_<precision>]``, ``sha256`` ->
``FLOAT[dim]``) and a view per backbone, ``embeddings_<backbone>``, joins them to ``images`` for
the weights used last.
Writers go through ``EmbeddingWriter`` so that another producer (Parquet shards from a cluster)
can be added without touching the rest.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from toolkit.errors import StoreBusy, TkError
from toolkit.ingest.scan import KnownFile, ScannedImage
from toolkit.plugin.results import Figure, Finding, Table, table_name
from toolkit.store.migrations import MIGRATIONS, migrate
from toolkit.store.sql import arrow_view, identifier, utcnow
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")
duckdb = lazy_import("duckdb")
pa = lazy_import("pyarrow")

# --- the writer interface ------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingSet:
    """Where one backbone's embeddings for one set of weights, at one precision, live.

    fp32 sets keep the names they always had; ``bf16`` and ``int8`` sets add the precision
    (``emb_resnet50__random_seed0_int8``), so vectors of different precisions never mix.
    """

    backbone: str
    weights_id: str
    dim: int
    precision: str = "fp32"

    @property
    def table(self) -> str:
        suffix = "" if self.precision == "fp32" else f"_{identifier(self.precision)}"
        return f"emb_{identifier(self.backbone)}__{identifier(self.weights_id)}{suffix}"

    @property
    def label(self) -> str:
        """``weights_id``, with the precision when it is not fp32 (for messages)."""
        return self.weights_id if self.precision == "fp32" else f"{self.weights_id} {self.precision}"


class EmbeddingWriter(Protocol):
    """What extraction needs from a store; a Parquet-shard writer can implement the same."""

    def missing(self, embedding_set: EmbeddingSet, sha256s: Iterable[str]) -> set[str]:
        """The hashes not yet embedded in ``embedding_set``."""

    def write_batch(self, run_id: str, images: list[ScannedImage],
                    vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]]) -> None:
        """Write images and their embeddings in one transaction."""


def _vectors_to_arrow(shas: list[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return pa.table({"sha256": pa.array(shas, pa.string()), "vector": column})


IMAGE_COLUMNS = ("path", "relpath", "sha256", "source", "label", "subtype", "magnification",
                 "patient_id", "width", "height", "size_bytes", "mtime_ns")


def _images_to_arrow(images: list[ScannedImage]) -> pa.Table:
    rows = {
        "path": [str(i.record.path) for i in images],
        "relpath": [i.record.relpath for i in images],
        "sha256": [i.sha256 for i in images],
        "source": [i.record.source for i in images],
        "label": [i.record.label for i in images],
        "subtype": [i.record.subtype for i in images],
        "magnification": pa.array([i.record.magnification for i in images], pa.int32()),
        "patient_id": [i.record.patient_id for i in images],
        "width": pa.array([i.width for i in images], pa.int32()),
        "height": pa.array([i.height for i in images], pa.int32()),
        "size_bytes": pa.array([i.size_bytes for i in images], pa.int64()),
        "mtime_ns": pa.array([i.mtime_ns for i in images], pa.int64()),
    }
    return pa.table({name: pa.array(values, pa.string()) if not isinstance(values, pa.Array) else values
                     for name, values in rows.items()})


class Store:
    """A tk DuckDB file. Open with ``Store.open(path)``; use as a context manager."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only

    @classmethod
    def open(cls, path: Path | str, read_only: bool = False) -> Store:
        path = Path(path)
        if read_only and not path.exists():
            raise TkError(f"store {path} does not exist; run `tk run` first or pass --store")
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" in message.lower():
                pid = re.search(r"PID (\d+)", message)
                holder = f"process {pid.group(1)}" if pid else "another process"
                raise StoreBusy(f"store {path} is in use by {holder} (DuckDB allows one writer); "
                                "wait for it to finish or use another --store") from exc
            raise TkError(f"store {path} cannot be opened: {message.splitlines()[0]}") from exc
        except duckdb.Error as exc:
            raise TkError(f"{path} is not a tk store ({str(exc).splitlines()[0]}); choose another --store") from exc
        store = cls(con, path, read_only)
        if not read_only:
            migrate(con)
            store._mark_interrupted_runs()
        return store

    def reader(self) -> Store:
        """A store on its own cursor of the same connection, for a plugin to read from."""
        return Store(self.con.cursor(), self.path, read_only=True)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # --- queries ---------------------------------------------------------------------------

    def query_df(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...] | None:
        """The first row of a query, or None (the result is always read to the end)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def table_exists(self, name: str) -> bool:
        row = self.one("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
        return bool(row and row[0])

    # --- images ----------------------------------------------------------------------------

    def known_files(self) -> dict[str, KnownFile]:
        rows = self.con.execute("SELECT path, sha256, size_bytes, mtime_ns, width, height FROM images").fetchall()
        return {r[0]: KnownFile(r[1], r[2], r[3], r[4], r[5]) for r in rows if r[2] is not None}

    def _upsert_images(self, run_id: str, images: list[ScannedImage]) -> None:
        if not images:
            return
        with arrow_view(self.con, _images_to_arrow(images)) as new:
            columns = ", ".join(IMAGE_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in IMAGE_COLUMNS if c != "path")
            self.con.execute(f"""
                INSERT INTO images ({columns})
                SELECT {columns} FROM {new}
                ON CONFLICT (path) DO UPDATE SET {updates}""")
            self.con.execute(f"""
                INSERT OR IGNORE INTO run_images
                SELECT ?, image_id FROM images WHERE path IN (SELECT path FROM {new})""", [run_id])

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        """The file path of each image id."""
        return dict(self.con.execute("SELECT image_id, path FROM images WHERE image_id IN (SELECT unnest(?))",
                                     [list(map(int, image_ids))]).fetchall())

    def add_images(self, run_id: str, images: list[ScannedImage]) -> None:
        """Record images that need no extraction (their content is already embedded)."""
        with self.transaction():
            self._upsert_images(run_id, images)

    # --- embeddings ------------------------------------------------------------------------

    def ensure_set(self, embedding_set: EmbeddingSet, weights_kind: str, weights_sha256: str | None,
                   weights_path: str | None, model_path: str | None = None,
                   model_sha256: str | None = None) -> list[str]:
        """Create the set's table if it is new; returns the backbone's other weights (and precisions)
        already stored (empty when the set existed or is the backbone's first). ``model_path`` is the
        quantised model that makes an int8 set, kept so that later runs add to it with the same model."""
        row = self.one("SELECT dim FROM embedding_sets WHERE table_name = ?", [embedding_set.table])
        if row is not None:
            if row[0] != embedding_set.dim:
                raise TkError(f"embedding set {embedding_set.table} holds {row[0]}-d vectors but "
                              f"{embedding_set.backbone} now gives {embedding_set.dim}-d; use another --store")
            return []
        others = [EmbeddingSet(embedding_set.backbone, r[0], embedding_set.dim, r[1]).label for r in self.con.execute(
            "SELECT weights_id, precision FROM embedding_sets WHERE backbone = ? ORDER BY created_at",
            [embedding_set.backbone]).fetchall()]
        with self.transaction():
            self.con.execute(f"""CREATE TABLE {embedding_set.table} (
                sha256 VARCHAR PRIMARY KEY,
                vector FLOAT[{int(embedding_set.dim)}] NOT NULL,
                run_id VARCHAR,
                created_at TIMESTAMP DEFAULT current_timestamp)""")
            self.con.execute("INSERT INTO embedding_sets (table_name, backbone, weights_id, weights_kind, weights_sha256, "
                             "weights_path, dim, precision, model_path, model_sha256) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [embedding_set.table, embedding_set.backbone, embedding_set.weights_id,
                              weights_kind, weights_sha256, weights_path, embedding_set.dim,
                              embedding_set.precision, model_path, model_sha256])
        return others

    def missing(self, embedding_set: EmbeddingSet, sha256s: Iterable[str]) -> set[str]:
        wanted = sorted(set(sha256s))
        if not wanted or not self.table_exists(embedding_set.table):
            return set(wanted)
        with arrow_view(self.con, pa.table({"sha256": wanted})) as view:
            rows = self.con.execute(f"SELECT w.sha256 FROM {view} w ANTI JOIN {embedding_set.table} e USING (sha256)").fetchall()
        return {r[0] for r in rows}

    def write_batch(self, run_id: str, images: list[ScannedImage],
                    vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]]) -> None:
        with self.transaction():
            for embedding_set, (shas, array) in vectors.items():
                if not shas:
                    continue
                with arrow_view(self.con, _vectors_to_arrow(shas, array)) as batch:
                    self.con.execute(f"INSERT OR IGNORE INTO {embedding_set.table} (sha256, vector, run_id) "
                                     f"SELECT sha256, vector::FLOAT[{int(embedding_set.dim)}], ? FROM {batch}", [run_id])
            self._upsert_images(run_id, images)

    def point_view(self, embedding_set: EmbeddingSet) -> None:
        """Make ``embeddings_<backbone>`` show this set (the weights used last)."""
        view = f"embeddings_{identifier(embedding_set.backbone)}"
        self.con.execute(f"""CREATE OR REPLACE VIEW {view} AS
            SELECT i.image_id, e.sha256, e.vector FROM images i JOIN {embedding_set.table} e USING (sha256)""")

    def current_set(self, backbone: str) -> tuple[EmbeddingSet, str, str | None] | None:
        """The set the ``embeddings_<backbone>`` view shows, with its weights kind and file path."""
        row = self.one(
            "SELECT s.backbone, s.weights_id, s.dim, s.precision, s.weights_kind, s.weights_path FROM run_backbones rb "
            "JOIN runs r USING (run_id) JOIN embedding_sets s ON s.table_name = rb.table_name "
            "WHERE rb.backbone = ? AND rb.status = 'ok' ORDER BY r.started_at DESC LIMIT 1", [backbone])
        return (EmbeddingSet(*row[:4]), row[4], row[5]) if row else None

    def set_model(self, embedding_set: EmbeddingSet) -> tuple[str, str] | None:
        """The quantised model (path, sha256) recorded as the maker of an int8 set, if any."""
        row = self.one("SELECT model_path, model_sha256 FROM embedding_sets WHERE table_name = ?", [embedding_set.table])
        return (row[0], row[1]) if row and row[0] else None

    def record_set_model(self, embedding_set: EmbeddingSet, path: str, sha256: str) -> None:
        self.con.execute("UPDATE embedding_sets SET model_path = ?, model_sha256 = ? WHERE table_name = ?",
                         [path, sha256, embedding_set.table])

    def last_parity(self, embedding_set: EmbeddingSet) -> dict[str, Any]:
        """The parity against fp32 recorded by the latest run that measured it for this set."""
        row = self.one("SELECT rb.parity_centred_cosine_mean, rb.parity_centred_cosine_min, rb.parity_rank_corr, "
                       "rb.parity_n_images FROM run_backbones rb JOIN runs r USING (run_id) WHERE rb.table_name = ? "
                       "AND rb.parity_n_images IS NOT NULL ORDER BY r.started_at DESC LIMIT 1", [embedding_set.table])
        keys = ("centred_cosine_mean", "centred_cosine_min", "similarity_rank_corr", "n_images")
        return dict(zip(keys, row)) if row else {}

    def run_embeddings(self, run_id: str, embedding_set: EmbeddingSet) -> tuple[pd.DataFrame, np.ndarray]:
        """Metadata and embeddings of the images of a run, ordered by image_id."""
        relation = self.con.sql(f"""
            SELECT i.image_id, i.sha256, i.relpath, i.label, i.subtype, i.magnification, i.patient_id,
                   i.width, i.height, e.vector
            FROM run_images r JOIN images i USING (image_id) JOIN {embedding_set.table} e USING (sha256)
            WHERE r.run_id = $run_id ORDER BY i.image_id""", params={"run_id": run_id})
        # DuckDB 2 renamed fetch_arrow_table to to_arrow_table
        table = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.fetch_arrow_table()
        vectors = table.column("vector").combine_chunks()
        flat = vectors.values.to_numpy(zero_copy_only=False) if len(vectors) else np.zeros(0, np.float32)
        matrix = np.asarray(flat, dtype=np.float32).reshape(len(vectors), embedding_set.dim)
        return table.drop_columns(["vector"]).to_pandas(), matrix

    # --- runs ------------------------------------------------------------------------------

    def start_run(self, run_id: str, command: str, settings: dict[str, Any], versions: dict[str, str]) -> None:
        self.con.execute("INSERT INTO runs (run_id, started_at, status, pid, command, settings, versions, warnings) "
                         "VALUES (?, ?, 'running', ?, ?, ?, ?, '[]')",
                         [run_id, utcnow(), os.getpid(), command, json.dumps(settings, default=str),
                          json.dumps(versions)])

    def update_run(self, run_id: str, **fields: Any) -> None:
        columns = {"finished_at", "status", "data_root", "source", "dataset_fingerprint", "n_images",
                   "n_skipped", "warnings"}
        unknown = set(fields) - columns
        if unknown:
            raise ValueError(f"unknown run fields {unknown}")
        values = [json.dumps(v) if k == "warnings" else v for k, v in fields.items()]
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.con.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*values, run_id])

    def _mark_interrupted_runs(self) -> None:
        for run_id, pid in self.con.execute("SELECT run_id, pid FROM runs WHERE status = 'running'").fetchall():
            if pid != os.getpid() and not _pid_alive(pid):
                self.con.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """One run as a dict (the latest when ``run_id`` is None)."""
        if run_id is None:
            df = self.query_df("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
        else:
            df = self.query_df("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            raise TkError(f"no run {run_id!r} in {self.path}; list runs with: tk sql \"SELECT run_id, started_at FROM runs\""
                          if run_id else f"store {self.path} has no runs yet; run `tk run` first")
        row = df.iloc[0].to_dict()
        for key in ("settings", "versions", "warnings"):
            row[key] = json.loads(row[key]) if isinstance(row[key], str) else row[key]
        return row

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

    # --- analysis results ------------------------------------------------------------------

    def save_results(self, run_id: str, analysis: str, backbone: str, status: str, message: str,
                     seconds: float, results: list[Table | Figure | Finding], cache_key: str | None = None) -> None:
        """Replace one analysis' results for a run and backbone, in one transaction."""
        with self.transaction():
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

    def result_table(self, run_id: str, analysis: str, table: str = "main", backbone: str = "") -> pd.DataFrame:
        """A stored result table of one analysis for a run and backbone (``""``: all backbones at
        once), without its run_id and backbone columns; empty when the analysis stored none."""
        name = table_name(identifier(analysis), identifier(table))
        if not self.table_exists(name):
            return pd.DataFrame()
        return self.query_df(f"SELECT * EXCLUDE (run_id, backbone) FROM {name} WHERE run_id = ? AND backbone = ?",
                             [run_id, backbone])

    def reusable_results(self, cache_key: str) -> str | None:
        """The latest run whose analysis finished (ok or skipped) with this cache key."""
        row = self.one("SELECT a.run_id FROM analysis_runs a JOIN runs r USING (run_id) WHERE a.cache_key = ? "
                       "AND a.status IN ('ok', 'skipped') ORDER BY r.started_at DESC LIMIT 1", [cache_key])
        return row[0] if row else None

    def copy_results(self, source_run: str, run_id: str, analysis: str, backbone: str) -> tuple[str, str, float]:
        """Copy one analysis' stored results from ``source_run`` to ``run_id``; returns (status, message, seconds)."""
        key = [source_run, analysis, backbone]
        if source_run == run_id:  # already this run's results: nothing to copy
            return self.one("SELECT status, message, seconds FROM analysis_runs WHERE run_id = ? AND analysis = ? "
                            "AND backbone = ?", key)
        with self.transaction():
            self._delete_results(run_id, analysis, backbone)
            for (name,) in self.con.execute("SELECT table_name FROM result_tables WHERE run_id = ? AND analysis = ? "
                                            "AND backbone = ?", key).fetchall():
                self.con.execute(f"INSERT INTO {name} SELECT * REPLACE (?::VARCHAR AS run_id) FROM {name} "
                                 "WHERE run_id = ? AND backbone = ?", [run_id, source_run, backbone])
            for table in ("result_tables", "results_figures", "results_findings", "analysis_runs"):
                self.con.execute(f"INSERT INTO {table} SELECT * REPLACE (?::VARCHAR AS run_id) FROM {table} "
                                 "WHERE run_id = ? AND analysis = ? AND backbone = ?", [run_id, *key])
        status, message, seconds = self.one("SELECT status, message, seconds FROM analysis_runs WHERE run_id = ? "
                                            "AND analysis = ? AND backbone = ?", [run_id, analysis, backbone])
        return status, message, seconds

    def _delete_results(self, run_id: str, analysis: str, backbone: str) -> None:
        key = [run_id, analysis, backbone]
        for (name,) in self.con.execute("SELECT DISTINCT table_name FROM result_tables WHERE run_id = ? AND analysis = ? AND backbone = ?", key).fetchall():
            self.con.execute(f"DELETE FROM {name} WHERE run_id = ? AND backbone = ?", [run_id, backbone])
        for table in ("result_tables", "results_figures", "results_findings", "analysis_runs"):
            self.con.execute(f"DELETE FROM {table} WHERE run_id = ? AND analysis = ? AND backbone = ?", key)

    def _save_table(self, run_id: str, analysis: str, backbone: str, table: Table) -> None:
        name = table_name(identifier(analysis), identifier(table.name))
        frame = table.data.copy()
        frame.columns = [identifier(str(c)) for c in frame.columns]
        frame.insert(0, "backbone", backbone)
        frame.insert(0, "run_id", run_id)
        with arrow_view(self.con, pa.Table.from_pandas(frame, preserve_index=False)) as result:
            if not self.table_exists(name):
                self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM {result} LIMIT 0")
            existing = {r[0] for r in self.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall()}
            for column, dtype in self.con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {result})").fetchall():
                if column not in existing:
                    self.con.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {dtype}')
            self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {result}")
        self.con.execute("INSERT INTO result_tables VALUES (?, ?, ?, ?, ?)",
                         [run_id, backbone, analysis, name, table.description])


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
