"""Schema migrations: small named functions, applied once each in order and recorded in ``_migrations``.

A migration is never edited after release; a change to the schema is a new migration at the end.
"""

from __future__ import annotations

import functools
import secrets
from typing import Callable

from toolkit.errors import TkError
from toolkit.lazy import lazy_import
from toolkit.store.sql import utcnow

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


RUN_IMAGE_COLUMNS = {"relpath": "VARCHAR", "sha256": "VARCHAR", "source": "VARCHAR", "label": "VARCHAR",
                     "subtype": "VARCHAR", "magnification": "INTEGER", "patient_id": "VARCHAR", "width": "INTEGER",
                     "height": "INTEGER"}
"""What a run read of each of its images (m008); ``images`` keeps what the latest run read."""


def m008_run_image_metadata(con: duckdb.DuckDBPyConnection) -> None:
    """Each run keeps its own view of its images (``run_images``: label, subtype, magnification,
    patient, relative path, content hash, size in pixels), so a later run that reads the same files
    with other labels (another manifest) no longer rewrites an earlier run's report. Runs stored
    before this migration get the view ``images`` holds now, the only one left."""
    for column, kind in RUN_IMAGE_COLUMNS.items():
        con.execute(f"ALTER TABLE run_images ADD COLUMN {column} {kind}")
    assigned = ", ".join(f"{column} = i.{column}" for column in RUN_IMAGE_COLUMNS)
    con.execute(f"UPDATE run_images SET {assigned} FROM images i WHERE run_images.image_id = i.image_id")


def m009_clinical(con: duckdb.DuckDBPyConnection) -> None:
    """Clinical variables of a run (``toolkit.ingest.clinical``): its columns with their kind and
    level, image-level values per image, patient-level values per patient, and the view ``clinical``
    that gives every value per image (long format: one row per image and column)."""
    create_clinical_tables(con)


def create_clinical_tables(con: duckdb.DuckDBPyConnection, temporary: bool = False) -> None:
    """The tables and view of ``m009_clinical``; ``temporary`` makes them in the connection's memory
    (the stand-in for a read-only store written before m009, ``toolkit.store.stand_ins``)."""
    temp = "TEMP " if temporary else ""
    con.execute(f"""
        CREATE {temp}TABLE clinical_columns (
            run_id VARCHAR, name VARCHAR, kind VARCHAR NOT NULL, level VARCHAR NOT NULL, source VARCHAR,
            PRIMARY KEY (run_id, name))""")
    con.execute(f"""
        CREATE {temp}TABLE clinical_values (
            run_id VARCHAR, image_id BIGINT, name VARCHAR, value_num DOUBLE, value_text VARCHAR,
            PRIMARY KEY (run_id, image_id, name))""")
    con.execute(f"""
        CREATE {temp}TABLE clinical_patient_values (
            run_id VARCHAR, patient_id VARCHAR, name VARCHAR, value_num DOUBLE, value_text VARCHAR,
            PRIMARY KEY (run_id, patient_id, name))""")
    con.execute(f"""
        CREATE {temp}VIEW clinical AS
        SELECT v.run_id, v.image_id, c.name, c.kind, c.level, v.value_num, v.value_text
        FROM clinical_values v JOIN clinical_columns c USING (run_id, name)
        UNION ALL
        SELECT c.run_id, r.image_id, c.name, c.kind, c.level, p.value_num, p.value_text
        FROM clinical_columns c JOIN run_images r ON r.run_id = c.run_id
        JOIN clinical_patient_values p ON p.run_id = c.run_id AND p.name = c.name AND p.patient_id = r.patient_id
        WHERE c.level = 'patient'""")


def m010_stain(con: duckdb.DuckDBPyConnection) -> None:
    """``tk run --stain``: the stain normalisation (method and reference, ``macenko-1a2b3c4d``) is part
    of an embedding set's key, so normalised and raw vectors never mix; each run records it per
    backbone. Sets made before keep ``none`` and their names."""
    # rebuilt to drop UNIQUE (backbone, weights_id, precision), which DuckDB cannot drop in place;
    # copied with SELECT * so that columns other migrations add are kept
    con.execute("CREATE TABLE embedding_sets_m010 AS SELECT *, 'none'::VARCHAR AS stain FROM embedding_sets")
    con.execute("DROP TABLE embedding_sets")
    con.execute("ALTER TABLE embedding_sets_m010 RENAME TO embedding_sets")
    con.execute("ALTER TABLE embedding_sets ADD PRIMARY KEY (table_name)")
    for column, default in (("created_at", "current_timestamp"), ("precision", "'fp32'"), ("stain", "'none'")):
        con.execute(f"ALTER TABLE embedding_sets ALTER COLUMN {column} SET DEFAULT {default}")
    for column in ("backbone", "weights_id", "dim", "precision", "stain"):
        con.execute(f"ALTER TABLE embedding_sets ALTER COLUMN {column} SET NOT NULL")
    con.execute("ALTER TABLE run_backbones ADD COLUMN stain VARCHAR DEFAULT 'none'")


def m011_shards(con: duckdb.DuckDBPyConnection) -> None:
    """The Parquet shards already ingested (``toolkit.store.shards``), so that a run reads each once."""
    create_ingested_shards(con)


def create_ingested_shards(con: duckdb.DuckDBPyConnection, temporary: bool = False) -> None:
    """The table of ``m011_shards``; ``temporary`` makes it in the connection's memory (the stand-in
    for a read-only store written before m011, ``toolkit.store.stand_ins``)."""
    con.execute(f"""CREATE {"TEMP " if temporary else ""}TABLE ingested_shards (
        shard VARCHAR NOT NULL,
        table_name VARCHAR NOT NULL,
        ingested_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (table_name, shard))""")


def m012_result_table_names(con: duckdb.DuckDBPyConnection) -> None:
    """Which analysis and result owns each ``results_*`` table, so that no two (analysis, table) pairs
    share one (``toolkit.store.results``). Tables stored before keep their names; where two pairs
    already shared one, the first to store there keeps it."""
    create_result_table_names(con)


def create_result_table_names(con: duckdb.DuckDBPyConnection, temporary: bool = False) -> None:
    """The table of ``m012_result_table_names``, filled from ``result_tables``; ``temporary`` makes it
    in the connection's memory (the stand-in for a read-only store written before m012)."""
    con.execute(f"""CREATE {"TEMP " if temporary else ""}TABLE result_table_names (
        table_name VARCHAR PRIMARY KEY,
        analysis VARCHAR NOT NULL,
        result VARCHAR NOT NULL,
        UNIQUE (analysis, result))""")
    con.execute("""
        INSERT INTO result_table_names
        SELECT table_name, analysis, CASE
                WHEN table_name = 'results_' || analysis THEN 'main'
                WHEN starts_with(table_name, 'results_' || analysis || '_')
                    THEN substr(table_name, length('results_' || analysis || '_') + 1)
                ELSE table_name END
        FROM (SELECT table_name, analysis, min(rowid) AS first FROM result_tables GROUP BY table_name, analysis)
        QUALIFY row_number() OVER (PARTITION BY table_name ORDER BY first) = 1""")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [m001_create_tables, m002_export_parity,
                                                                  m003_training, m004_analysis_cache_key,
                                                                  m005_precision, m006_run_error,
                                                                  m007_store_secrets, m008_run_image_metadata,
                                                                  m009_clinical, m010_stain, m011_shards,
                                                                  m012_result_table_names]


def newer_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Migrations recorded in the store that this tk does not know: the store was written by a newer tk."""
    recorded = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations'").fetchone()
    if not recorded[0]:
        return []
    known = {migration.__name__ for migration in MIGRATIONS}
    return sorted(row[0] for row in con.execute("SELECT name FROM _migrations").fetchall() if row[0] not in known)


def migrate(con: duckdb.DuckDBPyConnection, where: str = "the store") -> None:
    """Apply every migration not yet recorded in ``_migrations``, each in a transaction of its own:
    one that fails is rolled back whole and raises ``TkError`` naming it (``where``: the store's path)."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            migration(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?)", [migration.__name__, utcnow()])
        except Exception as exc:
            con.execute("ROLLBACK")
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TkError(f"{where}: schema migration {migration.__name__} failed ({cause}) and was rolled back, "
                          "leaving the store as it was; report this with the store's tk version") from exc
        con.execute("COMMIT")


@functools.cache
def core_tables() -> frozenset[str]:
    """The name of every table and view the migrations make (read from a store they build in memory):
    no plugin table or analysis result may take one."""
    con = duckdb.connect(":memory:")
    try:
        migrate(con)
        return frozenset(row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall())
    finally:
        con.close()
