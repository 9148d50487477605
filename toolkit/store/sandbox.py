"""The fence around a user's own SQL (`tk sql`): DuckDB's settings, not parsing, keep it in the store.

A confined connection reaches no file but the store: ``enable_external_access = false`` stops
``ATTACH``, ``COPY``, ``EXPORT DATABASE``, ``INSTALL``/``LOAD`` and every file reader (``read_csv``,
``read_text``, ``glob``), and ``lock_configuration = true`` stops a query from turning that back on.
Read-only connections also never spill to a temporary folder, so they create no file at all. Files
the user names explicitly may be read (DuckDB's ``allowed_paths`` and ``allowed_directories``); then
only ``SELECT`` statements run, as DuckDB's own parser classifies them, so nothing is ever written.
DuckDB checks a path as written, and the system follows symlinks, so an allowed folder that holds a
symlink leading out of the allowed files and folders is refused as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from toolkit.errors import TkError
from toolkit.lazy import lazy_import

duckdb = lazy_import("duckdb")


def _inside(path: str, files: Sequence[str], folders: Sequence[str]) -> bool:
    return path in files or any((path + os.sep).startswith(folder) for folder in folders)


def links_leading_out(folder: str, files: Sequence[str], folders: Sequence[str]) -> list[tuple[str, str]]:
    """The symlinks under ``folder`` (walked without following them) whose targets lie outside the
    allowed ``files`` and ``folders`` (resolved; each folder ends in a separator): (link, target)."""
    found = []
    for parent, dirs, names in os.walk(folder):
        for name in dirs + names:
            link = os.path.join(parent, name)
            if os.path.islink(link):
                target = os.path.realpath(link)
                if not _inside(target, files, folders):
                    found.append((link, target))
    return sorted(found)


def confine(con: Any, read_only: bool, readable: Sequence[Path] = ()) -> None:
    """Shut ``con`` in: only the store, plus reading the ``readable`` files and folders; then lock it.
    A folder holding a symlink that leads out of them is refused (see ``links_leading_out``)."""
    files = [str(p.resolve()) for p in readable if not p.is_dir()]
    folders = [str(p.resolve()).rstrip(os.sep) + os.sep for p in readable if p.is_dir()]
    for folder in folders:
        escaping = links_leading_out(folder, files, folders)
        if escaping:
            link, target = escaping[0]
            raise TkError(f"--allow-files {folder.rstrip(os.sep)}: the symlink {link} leads out of it (to {target}); "
                          "remove the link, or name its target with --allow-files too")
    if files:
        con.execute("SET allowed_paths = ?", [files])
    if folders:
        con.execute("SET allowed_directories = ?", [folders])
    if read_only:
        con.execute("SET temp_directory = ''")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def refuse_all_but_select(con: Any, query: str) -> None:
    """Raise unless every statement of ``query`` is a ``SELECT`` (DuckDB's parser decides)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise TkError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    others = sorted({s.type.name for s in statements if s.type != duckdb.StatementType.SELECT})
    if others:
        raise TkError(f"with --allow-files only SELECT statements run, not {', '.join(others)}; "
                      "drop --allow-files to use the store alone")
