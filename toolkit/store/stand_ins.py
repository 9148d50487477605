"""Read-only opens of a store written before the latest migrations: what a missing migration would
have made, built in the connection's memory (temporary tables), never in the file.

A command that only reads (``tk report``, ``tk sql``) never writes the store it was given, and cannot
on a read-only file or medium. For the migrations listed here it stands in for the missing tables:

- ``m007_store_secrets``: a secret made for this process only; pseudonyms are still HMACs that no one
  can recompute, but they differ from those of any other report of the store, and the report says so.
- ``m008_run_image_metadata``: each run's images as ``images`` holds them now (what the migration
  itself would backfill).
- ``m009_clinical``: empty clinical tables (no run before it had clinical variables).
- ``m010_stain``: every embedding set and run backbone without stain normalisation (``none``), as
  the migration itself records them.
- ``m011_shards``: no shard ingested (a reading command ingests none).
- ``m012_result_table_names``: the owners of the result tables, as the migration itself records them.

Any other missing migration is one error line: open the store once with a writing command.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from toolkit.errors import TkError
from toolkit.store.migrations import (MIGRATIONS, RUN_IMAGE_COLUMNS, create_clinical_tables, create_ingested_shards,
                                      create_result_table_names)


def _secret_for_this_process(con: Any) -> None:
    con.execute("CREATE TEMP TABLE store_secrets (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO store_secrets VALUES ('report_pseudonyms', ?)", [secrets.token_hex(32)])


def _stored(con: Any, table: str) -> str:
    """``table`` as the store file holds it, past any temporary stand-in of the same name."""
    database = con.execute("SELECT current_database()").fetchone()[0].replace('"', '""')
    return f'"{database}".main.{table}'


def _run_images_from_images(con: Any) -> None:
    columns = ", ".join(f"i.{column}" for column in RUN_IMAGE_COLUMNS)
    con.execute(f"""CREATE TEMP TABLE run_images AS SELECT r.run_id, r.image_id, {columns}
                    FROM {_stored(con, "run_images")} r LEFT JOIN {_stored(con, "images")} i USING (image_id)""")


def _no_clinical_variables(con: Any) -> None:
    create_clinical_tables(con, temporary=True)


def _no_stain_normalisation(con: Any) -> None:
    for table in ("embedding_sets", "run_backbones"):
        con.execute(f"CREATE TEMP TABLE {table} AS SELECT *, 'none'::VARCHAR AS stain FROM {_stored(con, table)}")


def _no_shards_ingested(con: Any) -> None:
    create_ingested_shards(con, temporary=True)


def _result_table_owners(con: Any) -> None:
    create_result_table_names(con, temporary=True)


STAND_INS: dict[str, Callable[[Any], None]] = {"m007_store_secrets": _secret_for_this_process,
                                               "m008_run_image_metadata": _run_images_from_images,
                                               "m009_clinical": _no_clinical_variables,
                                               "m010_stain": _no_stain_normalisation,
                                               "m011_shards": _no_shards_ingested,
                                               "m012_result_table_names": _result_table_owners}


def missing_migrations(con: Any) -> list[str]:
    """The migrations this tk knows that the store has not applied, in order."""
    recorded = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations' "
                           "AND table_schema = 'main'").fetchone()[0]
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()} if recorded else set()
    return [m.__name__ for m in MIGRATIONS if m.__name__ not in done]


def stand_in(con: Any, missing: list[str], path: Any) -> None:
    """Build the stand-ins of ``missing`` migrations on a read-only connection, or raise ``TkError``
    naming the first one that has none."""
    lacking = [name for name in missing if name not in STAND_INS]
    if lacking:
        raise TkError(f"store {path} predates schema {lacking[0]} and was opened read-only; open it once with a "
                      "writing tk command (tk run, or tk sql --write \"SELECT 1\") to upgrade it")
    for name in missing:
        STAND_INS[name](con)
