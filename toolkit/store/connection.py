"""The connection every part of the store shares: transactions and small query helpers."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from toolkit.lazy import lazy_import

pd = lazy_import("pandas")


class Connection:
    """A DuckDB connection (or cursor) with the file it belongs to."""

    def __init__(self, con: Any, path: Path, read_only: bool) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def query_df(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...] | None:
        """The first row of a query, or None (the result is always read to the end)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def table_exists(self, name: str) -> bool:
        row = self.one("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
        return bool(row and row[0])


class Part:
    """One concern of the store (images, runs, results...), over the connection it shares with the others."""

    def __init__(self, db: Connection) -> None:
        self.db = db

    @property
    def con(self) -> Any:
        return self.db.con
