"""The DuckDB store: one file holds every image, embedding set, run and result.

``Store`` holds one part per concern, each a small class over the shared connection and a module of
its own: ``images``, ``clinical``, ``embeddings``, ``shards``, ``runs``, ``results`` and ``tables``
(plugin-declared tables); ``migrations`` keeps the schema of the core tables. ``Store.reader()`` is
what plugins get: the same parts, less every method that writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from toolkit.errors import StoreBusy, TkError
from toolkit.lazy import lazy_import
from toolkit.store.clinical import Clinical, ClinicalReader
from toolkit.store.connection import Connection, Part
from toolkit.store.embeddings import Embeddings, EmbeddingsReader
from toolkit.store.images import Images, ImagesReader
from toolkit.store.migrations import MIGRATIONS, migrate, newer_migrations
from toolkit.store.results import Results, ResultsReader
from toolkit.store.runs import Runs, RunsReader
from toolkit.store.sandbox import confine, refuse_all_but_select
from toolkit.store.stand_ins import missing_migrations, stand_in
from toolkit.store.shards import Shards
from toolkit.store.tables import Tables, TablesReader

duckdb = lazy_import("duckdb")


class StoreReader:
    """What plugins get of a store: every part's read methods and none that writes (``context.store``).

    :ivar stand_ins: migrations an older store opened read-only lacks, stood in for in memory
        (``toolkit.store.stand_ins``).
    """

    def __init__(self, db: Connection, stand_ins: list[str]) -> None:
        self.path = db.path
        self.stand_ins = stand_ins
        self.images = ImagesReader(db)
        self.clinical = ClinicalReader(db)
        self.embeddings = EmbeddingsReader(db)
        self.runs = RunsReader(db)
        self.results = ResultsReader(db)
        self.tables = TablesReader(db)

    def reader(self) -> StoreReader:
        """Itself (a plugin context calls ``reader()`` on whichever store it is given)."""
        return self

    def __getattr__(self, name: str) -> Any:
        """Only reached for a name the reader lacks: say where a read lives, or that plugins do not write."""
        if name.startswith("_"):
            raise AttributeError(name)
        parts = [part for part, reads in vars(self).items() if isinstance(reads, Part) and hasattr(type(reads), name)]
        if parts:
            raise AttributeError(f"the store's reads are grouped by part: use store.{parts[0]}.{name}")
        raise AttributeError(f"the store is read-only to plugins, it has no {name!r}: analyses return their "
                             "results, exporters hand rows back with context.replace_rows (docs/store.md)")


class Store(Connection):
    """A tk DuckDB file. Open with ``Store.open(path)``; use as a context manager."""

    def __init__(self, con: Any, path: Path, read_only: bool) -> None:
        super().__init__(con, path, read_only)
        self.stand_ins: list[str] = []  # migrations an older store opened read-only lacks (toolkit.store.stand_ins)
        self.clinical = Clinical(self)
        self.images = Images(self, self.clinical)
        self.embeddings = Embeddings(self, self.images)
        self.shards = Shards(self, self.embeddings)
        self.runs = Runs(self)
        self.results = Results(self)
        self.tables = Tables(self)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, path: Path | str, read_only: bool = False, must_exist: bool = False) -> Store:
        """Open (and migrate, unless ``read_only``) the store at ``path``. Only a writable store that
        need not exist (``tk run``) is created; otherwise a missing file is a one-line error."""
        path = Path(path)
        existed = path.exists()
        if (read_only or must_exist) and not existed:
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
            try:
                migrate(con, f"store {path}")
            except BaseException:
                con.close()
                if not existed:  # a store this call created: nothing of it is left
                    for made in (path, path.with_name(path.name + ".wal")):
                        made.unlink(missing_ok=True)
                raise
            store.runs.mark_interrupted_runs()
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

    def reader(self, own_cursor: bool = False) -> StoreReader:
        """The store as a plugin reads it (no method that writes).

        :param own_cursor: read through a cursor of its own, for a plugin called in another thread
            (an analysis with a timeout); a cursor does not see the in-memory stand-ins, which only
            a store opened read-only has.
        """
        db = Connection(self.con.cursor(), self.path, read_only=True) if own_cursor else self
        return StoreReader(db, self.stand_ins)
