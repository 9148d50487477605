"""Exporters write into one folder and nowhere else: they get it as a ``Destination`` (a path whose
joins cannot leave it), and afterwards nothing beside the folder may have changed. They read the
store through its reader; the rows they hand back (``ExportContext.replace_rows``) are written here,
once the export has returned."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import PluginError, TkError
from toolkit.plugin.types import ExportContext, Exporter

if TYPE_CHECKING:
    from toolkit.store import Store


class ExportEscape(TkError):
    """An exporter wrote, or tried to write, outside its ``--out`` folder."""


class Destination(type(Path())):  # type: ignore[misc]  # PosixPath or WindowsPath, as Path() makes
    """A path in an export folder (``root``, a class attribute set per folder by :func:`destination`):
    joining ``..``, an absolute path or a symlink that leads out of the folder, or taking the parent
    of the folder itself, raises :class:`ExportEscape`."""

    root: Path

    def __truediv__(self, key: Any) -> Destination:
        return self._inside(super().__truediv__(key))

    def joinpath(self, *parts: Any) -> Destination:
        return self._inside(super().joinpath(*parts))

    @property
    def parent(self) -> Destination:
        return self._inside(super().parent)

    def _inside(self, path: Destination) -> Destination:
        if not Path(os.path.realpath(path)).is_relative_to(self.root):
            raise ExportEscape(f"wrote outside --out: {path} is not inside {self.root}")
        return path


def destination(out_dir: Path) -> Destination:
    """The folder ``out_dir`` (created, symlinks resolved) as a :class:`Destination`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(out_dir))
    return type("Destination", (Destination,), {"root": root})(root)


def neighbours(folder: Path, ignored: Path | None) -> dict[str, tuple[int, int, int]]:
    """What lies beside ``folder``: name -> (inode, size, mtime) of each entry of its parent, but the
    folder itself and the store's files (``ignored`` and its ``.wal``, written during exports)."""
    entries = {}
    for entry in os.scandir(folder.parent):
        path = Path(entry.path)
        if path == folder or (ignored is not None and (path == ignored or entry.name.startswith(ignored.name + "."))):
            continue
        stat = entry.stat(follow_symlinks=False)
        entries[entry.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return entries


def export_into(exporter: Exporter, context: ExportContext, out_dir: Path, store: Store) -> list[Path]:
    """Run ``exporter`` into ``out_dir`` and write the rows it handed back into ``store``; the paths
    it wrote. Raises :class:`ExportEscape` naming the stray files when it changed anything beside
    the folder or returned a path outside it (and then stores none of its rows)."""
    folder = destination(out_dir)
    store_file = Path(os.path.realpath(store.path)) if store.path else None
    context.handed.clear()
    before = neighbours(folder.root, store_file)
    written = [Path(p).resolve() for p in exporter.export(context, folder)]
    after = neighbours(folder.root, store_file)
    changed = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    stray = [str(folder.root.parent / name) for name in changed]
    stray += [str(p) for p in written if not p.is_relative_to(folder.root)]
    if stray:
        raise ExportEscape(f"wrote outside --out: {', '.join(dict.fromkeys(stray))}")
    store_handed(exporter, context, store)
    return written


def store_handed(exporter: Exporter, context: ExportContext, store: Store) -> None:
    """Write the rows ``exporter`` handed back, into tables it declares (``Exporter.tables``) only."""
    handed, context.handed[:] = list(context.handed), []
    names = sorted({rows.spec.name for rows in handed})
    undeclared = [name for name in names if name not in {spec.name for spec in exporter.tables}]
    if undeclared:
        raise PluginError(f"exporter {exporter.name} handed rows for {', '.join(undeclared)}, which it does not "
                          "declare; list the table in Exporter(tables=...)")
    if handed and store.read_only:
        raise TkError(f"exporter {exporter.name} handed rows for {', '.join(names)}, but store {store.path} is open "
                      "read-only here (tk report stores nothing); run it with tk run or tk export")
    for rows in handed:
        store.tables.write(rows)
