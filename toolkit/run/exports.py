"""Exporters write into one folder and nowhere else: they get it as a ``Destination`` (a path whose
joins cannot leave it), and afterwards nothing beside the folder may have changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.errors import TkError
from toolkit.plugin.types import ExportContext, Exporter


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


def export_into(exporter: Exporter, context: ExportContext, out_dir: Path) -> list[Path]:
    """Run ``exporter`` into ``out_dir``; the paths it wrote. Raises :class:`ExportEscape` naming the
    stray files when it changed anything beside the folder or returned a path outside it."""
    folder = destination(out_dir)
    store = Path(os.path.realpath(context.store.path)) if context.store.path else None
    before = neighbours(folder.root, store)
    written = [Path(p).resolve() for p in exporter.export(context, folder)]
    after = neighbours(folder.root, store)
    changed = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    stray = [str(folder.root.parent / name) for name in changed]
    stray += [str(p) for p in written if not p.is_relative_to(folder.root)]
    if stray:
        raise ExportEscape(f"wrote outside --out: {', '.join(dict.fromkeys(stray))}")
    return written
