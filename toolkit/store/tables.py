"""Tables a plugin (or a part of tk outside the core flow, such as ``tk train``) declares and owns.

Core migrations create only core tables. A plugin describes its own table with a ``TableSpec``;
the store creates it on first write and reads it with plain filters, so no plugin writes SQL text.
Plugins only read (``TablesReader``); an exporter hands the rows it has to store back as
``TableRows`` (``ExportContext.replace_rows``) and core writes them after it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from toolkit.errors import PluginError
from toolkit.lazy import lazy_import
from toolkit.store.connection import Part
from toolkit.store.migrations import core_tables
from toolkit.store.sql import arrow_view

pd = lazy_import("pandas")
pa = lazy_import("pyarrow")

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
COLUMN_TYPE = re.compile(r"[A-Z][A-Z0-9_]*( DEFAULT [A-Za-z_]+)?")
RESERVED_PREFIXES = ("results_", "emb_", "embeddings_", "_")


@dataclass(frozen=True)
class TableSpec:
    """A table owned by a plugin.

    :param name: lower-case letters, digits and underscores; never one of the prefixes core uses
        (``results_``, ``emb_``, ``embeddings_``, ``_``) nor the name of a table or view the
        migrations make (refused when the table is first read or written).
    :param columns: column name -> DuckDB type (``VARCHAR``, ``DOUBLE``, ``INTEGER``, ``BIGINT``,
        ``JSON``, ``TIMESTAMP``, ...; ``TIMESTAMP DEFAULT current_timestamp`` is allowed).
    :param key: columns that identify a row (a primary key).
    :param summary: columns ``tk`` prints in a terminal table (default: all).
    """

    name: str
    columns: dict[str, str]
    key: tuple[str, ...] = ()
    summary: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name) or self.name.startswith(RESERVED_PREFIXES):
            raise PluginError(f"table name {self.name!r} is taken by tk's core or malformed; use lower-case "
                              f"letters, digits and underscores, not {', '.join(RESERVED_PREFIXES)}...")
        for column, kind in self.columns.items():
            if not NAME.fullmatch(column) or not COLUMN_TYPE.fullmatch(kind):
                raise PluginError(f"table {self.name}: column {column!r} {kind!r} is not a plain name and DuckDB type")
        unknown = [c for c in (*self.key, *self.summary) if c not in self.columns]
        if unknown:
            raise PluginError(f"table {self.name}: {', '.join(unknown)} are not among its columns")

    def ddl(self) -> str:
        columns = [f'"{name}" {kind}' for name, kind in self.columns.items()]
        if self.key:
            columns.append(f"PRIMARY KEY ({', '.join(map(quoted, self.key))})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"


@dataclass(frozen=True)
class TableRows:
    """Rows for a declared table, handed back by a plugin for core to write: the rows matching
    ``where`` are replaced by ``rows`` (``where`` None: ``rows`` are appended)."""

    spec: TableSpec
    rows: list[dict[str, Any]]
    where: dict[str, Any] | None = None


def core_name(spec: TableSpec) -> TableSpec:
    """``spec``, unless it names a core table or view (those the migrations make): then ``PluginError``."""
    if spec.name in core_tables():
        raise PluginError(f"table name {spec.name!r} is taken by tk's core (a table of its migrations); "
                          "declare the table under another name")
    return spec


def quoted(column: str) -> str:
    """A column name as a SQL identifier (names are checked by TableSpec; ``class`` is a keyword)."""
    return f'"{column}"'


def _where(filters: dict[str, Any], spec: TableSpec) -> tuple[str, list[Any]]:
    """``WHERE`` text and parameters for equality (or, for a list, membership) filters."""
    clauses, params = [], []
    for column, value in filters.items():
        if column not in spec.columns:
            raise ValueError(f"table {spec.name} has no column {column!r}")
        if isinstance(value, (list, tuple, set)):
            clauses.append(f"{quoted(column)} IN (SELECT unnest(?))")
            params.append(list(value))
        else:
            clauses.append(f"{quoted(column)} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class TablesReader(Part):
    """Reads plugin-declared tables."""

    def rows(self, spec: TableSpec, where: dict[str, Any] | None = None, order_by: Iterable[str] = (),
             descending: bool = False, limit: int | None = None) -> pd.DataFrame:
        """The rows matching ``where``, with the declared columns (empty when the table does not exist;
        a column an older store lacks reads as missing values)."""
        if not self.db.table_exists(core_name(spec).name):
            return pd.DataFrame(columns=list(spec.columns))
        clause, params = _where(where or {}, spec)
        order = list(order_by)
        if any(column not in spec.columns for column in order):
            raise ValueError(f"table {spec.name}: cannot order by {order}")
        sql = f"SELECT * FROM {spec.name}{clause}"
        if order:
            sql += " ORDER BY " + ", ".join(f"{quoted(column)}{' DESC' if descending else ''}" for column in order)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.db.query_df(sql, params).reindex(columns=list(spec.columns))  # columns an old store lacks: empty


class Tables(TablesReader):
    """Creates and writes plugin-declared tables."""

    def ensure_table(self, spec: TableSpec) -> None:
        """Create ``spec``'s table if the store does not have it yet, and add the columns a newer
        version of the plugin declares (a declared table only ever grows)."""
        self.con.execute(core_name(spec).ddl())
        present = {row[0] for row in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [spec.name]).fetchall()}
        for column, kind in spec.columns.items():
            if column not in present:
                self.con.execute(f"ALTER TABLE {spec.name} ADD COLUMN {quoted(column)} {kind}")

    def replace_rows(self, spec: TableSpec, rows: Iterable[dict[str, Any]], where: dict[str, Any]) -> None:
        """Delete the rows matching ``where`` and insert ``rows``, in one transaction."""
        self.ensure_table(spec)
        clause, params = _where(where, spec)
        with self.db.transaction():
            self.con.execute(f"DELETE FROM {spec.name}{clause}", params)
            self._insert(spec, list(rows))

    def write(self, handed: TableRows) -> None:
        """Write rows a plugin handed back: replace those matching ``where``, or append."""
        if handed.where is None:
            self.insert_rows(handed.spec, handed.rows)
        else:
            self.replace_rows(handed.spec, handed.rows, handed.where)

    def insert_rows(self, spec: TableSpec, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` (dicts keyed by column; missing columns take their default or NULL)."""
        self.ensure_table(spec)
        self._insert(spec, list(rows))

    def update_rows(self, spec: TableSpec, values: dict[str, Any], where: dict[str, Any]) -> None:
        """Set ``values`` on the rows matching ``where``."""
        core_name(spec)
        unknown = [c for c in values if c not in spec.columns]
        if unknown:
            raise ValueError(f"table {spec.name} has no columns {unknown}")
        clause, params = _where(where, spec)
        assignments = ", ".join(f"{quoted(column)} = ?" for column in values)
        self.con.execute(f"UPDATE {spec.name} SET {assignments}{clause}", [*values.values(), *params])

    def _insert(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = [c for c in spec.columns if any(c in row for row in rows)]
        unknown = {c for row in rows for c in row} - set(spec.columns)
        if unknown:
            raise ValueError(f"table {spec.name} has no columns {sorted(unknown)}")
        frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
        with arrow_view(self.con, pa.Table.from_pandas(frame, preserve_index=False)) as view:
            names = ", ".join(map(quoted, columns))
            self.con.execute(f"INSERT INTO {spec.name} ({names}) SELECT {names} FROM {view}")
