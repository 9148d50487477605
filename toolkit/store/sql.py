"""Small SQL helpers every part of the store uses: safe identifiers, Arrow tables as views, UTC now."""

from __future__ import annotations

import itertools
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from toolkit.lazy import lazy_import

duckdb = lazy_import("duckdb")
pa = lazy_import("pyarrow")


def identifier(text: str) -> str:
    """A SQL identifier made from ``text``: lower-case letters, digits and underscores only."""
    cleaned = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "x_" + cleaned
    return cleaned[:60]


_view_counter = itertools.count()


@contextmanager
def arrow_view(con: duckdb.DuckDBPyConnection, table: pa.Table) -> Iterator[str]:
    """Expose an Arrow table to SQL under a fresh name for the duration of the block."""
    name = f"_arrow_{next(_view_counter)}"
    con.register(name, table)
    try:
        yield name
    finally:
        try:
            con.unregister(name)
        except duckdb.Error:  # the transaction was aborted; the name is unique, so nothing clashes
            pass


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
