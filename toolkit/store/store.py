"""The DuckDB store: one file holds every image, embedding set, run and result.

``Store`` gathers the parts (``images`` with ``clinical``, ``embeddings``, ``runs``, ``results``,
``tables``), each a module of its own; ``migrations`` keeps the schema of the core tables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from toolkit.errors import StoreBusy, TkError
from toolkit.lazy import lazy_import
from toolkit.store.images import Images
from toolkit.store.migrations import MIGRATIONS, migrate, newer_migrations
from toolkit.store.results import Results
from toolkit.store.runs import Runs
from toolkit.store.sandbox import confine, refuse_all_but_select
from toolkit.store.stand_ins import missing_migrations, stand_in
from toolkit.store.shards import Shards
from toolkit.store.tables import DeclaredTables

duckdb = lazy_import("duckdb")


class Store(Images, Shards, Runs, Results, DeclaredTables):
    """A tk DuckDB file. Open with ``Store.open(path)``; use as a context manager."""

    stand_ins: list[str] = []
    """Migrations an older store opened read-only lacks, stood in for in memory (``toolkit.store.stand_ins``)."""

    @classmethod
    def open(cls, path: Path | str, read_only: bool = False, must_exist: bool = False) -> Store:
        """Open (and migrate, unless ``read_only``) the store at ``path``. Only a writable store that
        need not exist (``tk run``) is created; otherwise a missing file is a one-line error."""
        path = Path(path)
        if (read_only or must_exist) and not path.exists():
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
        newer = newer_migrations(con)
        if newer:
            con.close()
            raise TkError(f"store {path} was written by a newer tk (schema {newer[-1]}); upgrade tk "
                          "(pip install -U tk-embeddings) to open it, or use another --store")
        store = cls(con, path, read_only)
        if not read_only:
            migrate(con)
            store._mark_interrupted_runs()
        elif (missing := missing_migrations(con)) and missing != [m.__name__ for m in MIGRATIONS]:
            try:  # an older store, read as it is: see toolkit.store.stand_ins
                stand_in(con, missing, path)
            except BaseException:
                con.close()
                raise
            store.stand_ins = missing
        return store

    @classmethod
    def open_for_sql(cls, path: Path | str, write: bool = False, readable: Sequence[Path] = ()) -> Store:
        """The store for a user's own SQL (`tk sql`), confined to itself (see ``toolkit.store.sandbox``).

        :param write: open read-write; statements may change the store, still no other file.
        :param readable: files and folders a read-only query may also read.
        """
        if write and readable:
            raise TkError("--allow-files only reads files; run the writing statement without it")
        missing = [str(p) for p in readable if not p.exists()]
        if missing:
            raise TkError(f"--allow-files {', '.join(missing)}: no such file or folder; name files that exist")
        store = cls.open(path, read_only=not write)
        confine(store.con, read_only=not write, readable=readable)
        return store

    def run_user_sql(self, query: str, select_only: bool = False) -> Any:
        """A user's query as a DataFrame; ``select_only`` refuses every statement but SELECT first."""
        if select_only:
            refuse_all_but_select(self.con, query)
        try:
            return self.con.execute(query).df()
        except duckdb.Error as exc:
            raise TkError(f"SQL error: {str(exc).splitlines()[0]}") from exc

    def reader(self) -> Store:
        """A store on its own cursor of the same connection, for a plugin to read from."""
        return Store(self.con.cursor(), self.path, read_only=True)
