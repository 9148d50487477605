"""Parquet shards: how a cluster hands embeddings to the store without opening it.

Workers (``toolkit.extract.distributed``) write one shard per finished task and embedding set,
``<shard dir>/<set table>/<task id>.parquet``, first under a temporary name and then renamed, so a
half-written shard never exists under a name ingest reads. A shard holds ``sha256`` (string),
``set`` (the set's table name) and ``vector`` (fixed-size list of float32, the set's dim); its schema
metadata ``tk.set`` (JSON) describes the set, so shards made by a job without the tk driver can be
ingested too (``tk ingest``, docs/store.md).

The driver ingests a set's new shards in one transaction: ``INSERT OR IGNORE`` on the set's
primary key (sha256), so rows already stored are never duplicated, and each shard's name is recorded
in ``ingested_shards`` so later runs do not read it again. Shards are kept for audit; deleting the
folder once ingested loses nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import TkError
from toolkit.lazy import lazy_import
from toolkit.store.connection import Connection, Part
from toolkit.store.embeddings import Embeddings, EmbeddingSet
from toolkit.store.sql import identifier

pa = lazy_import("pyarrow")
pq = lazy_import("pyarrow.parquet")
duckdb = lazy_import("duckdb")

SET_METADATA = b"tk.set"
SUFFIX = ".parquet"


@dataclass(frozen=True)
class ShardSet:
    """What a shard's ``tk.set`` metadata says about the embedding set its vectors belong to."""

    backbone: str
    weights_id: str
    dim: int
    precision: str
    weights_kind: str
    weights_sha256: str | None = None
    weights_path: str | None = None
    model_path: str | None = None  # the int8 model that made the vectors, if any
    model_sha256: str | None = None

    @property
    def embedding_set(self) -> EmbeddingSet:
        return EmbeddingSet(self.backbone, self.weights_id, self.dim, self.precision)


@dataclass(frozen=True)
class Ingested:
    """What one ingest of one set did."""

    table: str
    shards: int
    rows: int
    new_rows: int
    rejected: int  # rows with a NaN or infinite value, a bad sha256 or another set's name: never stored


def shard_schema(shard_set: ShardSet) -> pa.Schema:
    """The Arrow schema of a shard of ``shard_set``, its metadata included."""
    return pa.schema([("sha256", pa.string()), ("set", pa.string()),
                      ("vector", pa.list_(pa.float32(), shard_set.dim))],
                     metadata={SET_METADATA: json.dumps(asdict(shard_set)).encode()})


def write_shard(folder: Path | str, shard_set: ShardSet, sha256s: list[str], vectors: np.ndarray) -> Path:
    """Write one shard of ``shard_set`` under ``folder`` (zstd) atomically; returns its path.

    Refuses NaN or infinite vectors: content-keyed, a bad vector would be reused by every run.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (len(sha256s), shard_set.dim):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(sha256s)} images of dim {shard_set.dim}")
    if not np.isfinite(vectors).all():
        raise ValueError("NaN or infinite embeddings are never written")
    table_name = shard_set.embedding_set.table
    target = Path(folder) / table_name
    target.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    final, partial = target / f"{name}{SUFFIX}", target / f".{name}{SUFFIX}.partial"
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), shard_set.dim)
    table = pa.Table.from_arrays([pa.array(sha256s, pa.string()), pa.array([table_name] * len(sha256s), pa.string()),
                                  column], schema=shard_schema(shard_set))
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, final)  # atomic: ingest never sees half a shard
    return final


def shard_files(folder: Path | str) -> dict[str, list[Path]]:
    """The finished shards under ``folder``, by set table (temporary files left out)."""
    found: dict[str, list[Path]] = {}
    root = Path(folder)
    if not root.is_dir():
        return found
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.glob(f"*{SUFFIX}") if not p.name.startswith("."))
        if files:
            found[sub.name] = files
    return found


def read_set(path: Path) -> ShardSet:
    """The ``tk.set`` metadata of a shard; a one-line error naming the file when it has none."""
    return _footer(path)[0]


def _footer(path: Path) -> tuple[ShardSet, int]:
    """A shard's set and row count, from its Parquet footer."""
    try:
        footer = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TkError(f"shard {path} is not a readable Parquet file ({str(exc).splitlines()[0]}); "
                      "remove it and run again") from exc
    metadata = footer.metadata or {}
    if SET_METADATA not in metadata:
        raise TkError(f"shard {path} has no {SET_METADATA.decode()} metadata; write shards with "
                      "toolkit.store.shards.write_shard or add it (docs/store.md)")
    try:
        found = ShardSet(**json.loads(metadata[SET_METADATA]))
    except (TypeError, ValueError) as exc:
        raise TkError(f"shard {path}: its {SET_METADATA.decode()} metadata is malformed ({exc}); see docs/store.md") from exc
    if found.embedding_set.table != path.parent.name:
        raise TkError(f"shard {path} holds set {found.embedding_set.table} but lies in folder {path.parent.name}; "
                      "move it into the folder named after its set")
    return found, footer.num_rows


class Shards(Part):
    """Ingesting Parquet shards into embedding sets (one transaction per set, idempotent)."""

    def __init__(self, db: Connection, embeddings: Embeddings) -> None:
        super().__init__(db)
        self.embeddings = embeddings

    def ingest_shards(self, folder: Path | str, run_id: str | None = None) -> list[Ingested]:
        """Ingest every shard under ``folder`` not ingested before; returns what each set got."""
        done: list[Ingested] = []
        for table, files in shard_files(folder).items():
            if table != identifier(table):
                raise TkError(f"shard folder {Path(folder) / table}: not an embedding set name; remove it")
            new = self._not_ingested(table, files)
            if new:
                done.append(self._ingest_set(table, new, run_id))
        return done

    def shard_set(self, embedding_set: EmbeddingSet) -> ShardSet:
        """The ``tk.set`` metadata of a stored set (created by ``ensure_set``), for the shards of its vectors."""
        row = self.db.one("SELECT weights_kind, weights_sha256, weights_path, model_path, model_sha256 FROM embedding_sets "
                          "WHERE table_name = ?", [embedding_set.table])
        if row is None:
            raise TkError(f"embedding set {embedding_set.table} is not in the store; plan it before embedding")
        return ShardSet(embedding_set.backbone, embedding_set.weights_id, embedding_set.dim, embedding_set.precision,
                        *row)

    def _not_ingested(self, table: str, files: list[Path]) -> list[Path]:
        seen = {r[0] for r in self.con.execute("SELECT shard FROM ingested_shards WHERE table_name = ?",
                                               [table]).fetchall()}
        return [path for path in files if path.name not in seen]

    def _ingest_set(self, table: str, files: list[Path], run_id: str | None) -> Ingested:
        """One transaction: the files' good rows staged once, then those the set lacks inserted
        (an anti join: measured 10x faster than INSERT OR IGNORE on FLOAT[2048] rows)."""
        footers = [_footer(path) for path in files]
        shard_set = footers[0][0]
        for path, (other, _) in zip(files, footers):
            if other != shard_set:
                raise TkError(f"shard {path} describes another set than {files[0]}; shards of one folder "
                              "must come from the same backbone, weights and precision")
        self.embeddings.ensure_set(shard_set.embedding_set, shard_set.weights_kind, shard_set.weights_sha256, shard_set.weights_path,
                        shard_set.model_path, shard_set.model_sha256)
        dim = int(shard_set.dim)
        good = (f"set = ? AND regexp_full_match(sha256, '[0-9a-f]{{64}}') AND len(vector) = {dim} "
                "AND isfinite(list_sum(vector))")  # a NaN or infinity anywhere makes the (double) sum so
        try:
            with self.db.transaction():
                self.con.execute(f"CREATE TEMP TABLE shard_rows AS SELECT sha256, vector::FLOAT[{dim}] AS vector "
                                 f"FROM read_parquet(?) WHERE {good}", [[str(p) for p in files], table])
                kept, distinct = self.db.one("SELECT count(*), count(DISTINCT sha256) FROM shard_rows")
                rows = "shard_rows" if kept == distinct else "(SELECT DISTINCT ON (sha256) * FROM shard_rows)"
                new = self.db.one(f"INSERT INTO {table} (sha256, vector, run_id) SELECT s.sha256, s.vector, ? "
                                  f"FROM {rows} s ANTI JOIN {table} USING (sha256)", [run_id])[0]
                self.con.execute("DROP TABLE shard_rows")
                self.con.executemany("INSERT INTO ingested_shards (shard, table_name) VALUES (?, ?)",
                                     [[p.name, table] for p in files])
        except duckdb.Error as exc:
            raise TkError(f"shards of {table} cannot be ingested ({str(exc).splitlines()[0]}); their schema must be "
                          "sha256 VARCHAR, set VARCHAR, vector FLOAT[dim] (docs/store.md)") from exc
        total = sum(count for _, count in footers)
        return Ingested(table, len(files), total, int(new), total - int(kept))
