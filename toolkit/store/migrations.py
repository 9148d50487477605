"""Schema migrations: small named functions, applied once each in order and recorded in ``_migrations``.

A migration is never edited after release; a change to the schema is a new migration at the end.
"""

from __future__ import annotations

import secrets
from typing import Callable


from toolkit.store.sql import utcnow
from toolkit.lazy import lazy_import

duckdb = lazy_import("duckdb")

def m001_create_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SEQUENCE image_id_seq START 1")
    con.execute("""
        CREATE TABLE images (
            image_id BIGINT PRIMARY KEY DEFAULT nextval('image_id_seq'),
            path VARCHAR NOT NULL UNIQUE,
            relpath VARCHAR NOT NULL,
            sha256 VARCHAR NOT NULL,
            source VARCHAR,
            label VARCHAR,
            subtype VARCHAR,
            magnification INTEGER,
            patient_id VARCHAR,
            width INTEGER,
            height INTEGER,
            size_bytes BIGINT,
            mtime_ns BIGINT,
            added_at TIMESTAMP DEFAULT current_timestamp
        )""")
    con.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            status VARCHAR,
            pid INTEGER,
            command VARCHAR,
            data_root VARCHAR,
            source VARCHAR,
            dataset_fingerprint VARCHAR,
            n_images INTEGER,
            n_skipped INTEGER,
            settings JSON,
            versions JSON,
            warnings JSON
        )""")
    con.execute("CREATE TABLE run_images (run_id VARCHAR, image_id BIGINT, PRIMARY KEY (run_id, image_id))")
    con.execute("CREATE TABLE skipped_files (run_id VARCHAR, relpath VARCHAR, reason VARCHAR)")
    con.execute("""
        CREATE TABLE embedding_sets (
            table_name VARCHAR PRIMARY KEY,
            backbone VARCHAR NOT NULL,
            weights_id VARCHAR NOT NULL,
            weights_kind VARCHAR,
            weights_sha256 VARCHAR,
            weights_path VARCHAR,
            dim INTEGER NOT NULL,
            created_at TIMESTAMP DEFAULT current_timestamp,
            UNIQUE (backbone, weights_id)
        )""")
    con.execute("""
        CREATE TABLE run_backbones (
            run_id VARCHAR,
            backbone VARCHAR,
            table_name VARCHAR,
            weights_id VARCHAR,
            weights_kind VARCHAR,
            weights_sha256 VARCHAR,
            weights_note VARCHAR,
            dim INTEGER,
            n_embedded INTEGER,
            n_reused INTEGER,
            seconds DOUBLE,
            images_per_second DOUBLE,
            status VARCHAR,
            error VARCHAR,
            PRIMARY KEY (run_id, backbone)
        )""")
    con.execute("""
        CREATE TABLE analysis_runs (
            run_id VARCHAR,
            analysis VARCHAR,
            backbone VARCHAR,
            status VARCHAR,
            message VARCHAR,
            seconds DOUBLE,
            PRIMARY KEY (run_id, analysis, backbone)
        )""")
    con.execute("""
        CREATE TABLE results_findings (
            run_id VARCHAR, backbone VARCHAR, analysis VARCHAR,
            severity VARCHAR, message VARCHAR, detail JSON
        )""")
    con.execute("""
        CREATE TABLE results_figures (
            run_id VARCHAR, backbone VARCHAR, analysis VARCHAR,
            name VARCHAR, mime VARCHAR, content BLOB, alt VARCHAR, caption VARCHAR
        )""")
    con.execute("CREATE TABLE result_tables (run_id VARCHAR, backbone VARCHAR, analysis VARCHAR, table_name VARCHAR, description VARCHAR)")
    con.execute("CREATE TABLE exports (run_id VARCHAR, exporter VARCHAR, path VARCHAR, created_at TIMESTAMP)")


def m002_export_parity(con: duckdb.DuckDBPyConnection) -> None:
    """Once created ``export_parity``; that table now belongs to the deployment exporters, which
    declare it (``TableSpec``) and create it when they first write. Kept, empty, so that stores
    which recorded it and new stores agree on the list of applied migrations."""


def m003_training(con: duckdb.DuckDBPyConnection) -> None:
    """Once created the ``training_*`` tables; they now belong to ``tk train``
    (``toolkit.models.training_record``), which declares and creates them. Kept, empty, as m002."""


def m004_analysis_cache_key(con: duckdb.DuckDBPyConnection) -> None:
    """Analyses whose code, data and settings are unchanged reuse stored results (``cache_key``)."""
    con.execute("ALTER TABLE analysis_runs ADD COLUMN cache_key VARCHAR")


def m005_precision(con: duckdb.DuckDBPyConnection) -> None:
    """``tk run --precision``: the numeric precision is part of an embedding set's key (so bf16 or
    int8 vectors never join fp32 ones), the quantised model that made an int8 set is kept with it,
    and each run records its precision and its parity against fp32 per backbone."""
    con.execute("""
        CREATE TABLE embedding_sets_m005 (
            table_name VARCHAR PRIMARY KEY,
            backbone VARCHAR NOT NULL,
            weights_id VARCHAR NOT NULL,
            weights_kind VARCHAR,
            weights_sha256 VARCHAR,
            weights_path VARCHAR,
            dim INTEGER NOT NULL,
            created_at TIMESTAMP DEFAULT current_timestamp,
            precision VARCHAR NOT NULL DEFAULT 'fp32',
            model_path VARCHAR,
            model_sha256 VARCHAR,
            UNIQUE (backbone, weights_id, precision)
        )""")
    con.execute("INSERT INTO embedding_sets_m005 (table_name, backbone, weights_id, weights_kind, weights_sha256, "
                "weights_path, dim, created_at) SELECT table_name, backbone, weights_id, weights_kind, weights_sha256, "
                "weights_path, dim, created_at FROM embedding_sets")
    con.execute("DROP TABLE embedding_sets")
    con.execute("ALTER TABLE embedding_sets_m005 RENAME TO embedding_sets")
    con.execute("ALTER TABLE run_backbones ADD COLUMN precision VARCHAR DEFAULT 'fp32'")
    for column in ("parity_centred_cosine_mean", "parity_centred_cosine_min", "parity_rank_corr"):
        con.execute(f"ALTER TABLE run_backbones ADD COLUMN {column} DOUBLE")
    con.execute("ALTER TABLE run_backbones ADD COLUMN parity_n_images INTEGER")


def m006_run_error(con: duckdb.DuckDBPyConnection) -> None:
    """A failed run keeps the error that stopped it, for ``tk report`` to say why."""
    con.execute("ALTER TABLE runs ADD COLUMN error VARCHAR")


def m007_store_secrets(con: duckdb.DuckDBPyConnection) -> None:
    """A random secret per store (256 bits) that keys the report's patient pseudonyms (HMAC), so that
    no one without the store can recover an id by hashing candidates."""
    con.execute("CREATE TABLE store_secrets (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO store_secrets VALUES ('report_pseudonyms', ?)", [secrets.token_hex(32)])


def m011_shards(con: duckdb.DuckDBPyConnection) -> None:
    """The Parquet shards already ingested (``toolkit.store.shards``), so that a run reads each once."""
    con.execute("""CREATE TABLE ingested_shards (
        shard VARCHAR NOT NULL,
        table_name VARCHAR NOT NULL,
        ingested_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (table_name, shard))""")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [m001_create_tables, m002_export_parity,
                                                                  m003_training, m004_analysis_cache_key,
                                                                  m005_precision, m006_run_error,
                                                                  m007_store_secrets, m011_shards]


def newer_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Migrations recorded in the store that this tk does not know: the store was written by a newer tk."""
    recorded = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations'").fetchone()
    if not recorded[0]:
        return []
    known = {migration.__name__ for migration in MIGRATIONS}
    return sorted(row[0] for row in con.execute("SELECT name FROM _migrations").fetchall() if row[0] not in known)


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply every migration not yet recorded in ``_migrations``."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION")
        migration(con)
        con.execute("INSERT INTO _migrations VALUES (?, ?)", [migration.__name__, utcnow()])
        con.execute("COMMIT")
