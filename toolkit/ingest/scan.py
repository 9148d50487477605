"""Hash files and read their headers in parallel, reusing what the store already knows."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from toolkit.ingest.images import UnreadableImage, read_size
from toolkit.ingest.sources import ImageRecord, SkippedFile


@dataclass(frozen=True)
class ScannedImage:
    """An image record with its content hash, file stamp and pixel size."""

    record: ImageRecord
    sha256: str
    size_bytes: int
    mtime_ns: int
    width: int
    height: int


@dataclass(frozen=True)
class KnownFile:
    """What the store remembers about a path, to skip re-hashing unchanged files."""

    sha256: str
    size_bytes: int
    mtime_ns: int
    width: int
    height: int


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, or of a folder's files: every file below it that is not hidden
    (no part of its relative path starts with ``.``, so a hub's ``.cache`` is left out), as sorted
    (relative path, file sha256) pairs."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if not any(part.startswith(".") for part in relative.split("/")):
            digest.update(f"{relative}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _scan_one(record: ImageRecord, known: KnownFile | None) -> ScannedImage | SkippedFile:
    try:
        stat = os.stat(record.path)
        if known and known.size_bytes == stat.st_size and known.mtime_ns == stat.st_mtime_ns:
            return ScannedImage(record, known.sha256, stat.st_size, stat.st_mtime_ns, known.width, known.height)
        if stat.st_size == 0:
            return SkippedFile(record.relpath, "empty file (0 bytes); copy it again")
        width, height = read_size(record.path)
        return ScannedImage(record, sha256_file(record.path), stat.st_size, stat.st_mtime_ns, width, height)
    except UnreadableImage as exc:
        return SkippedFile(record.relpath, str(exc))
    except OSError as exc:
        return SkippedFile(record.relpath, f"cannot read file ({exc.strerror or exc})")


def scan(records: Iterable[ImageRecord], known: dict[str, KnownFile], threads: int = 4) -> tuple[list[ScannedImage], list[SkippedFile]]:
    """Hash and check every record; returns readable images and skipped files, in input order."""
    records = list(records)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda r: _scan_one(r, known.get(str(r.path))), records))
    images = [r for r in results if isinstance(r, ScannedImage)]
    skipped = [r for r in results if isinstance(r, SkippedFile)]
    return images, skipped
