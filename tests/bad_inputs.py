"""The bad-input corpus: every kind of file a messy real folder holds, generated (no binaries)."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.datasets import tile


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels (for pixel-limit checks)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _truncate(path: Path, keep: float = 0.4) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# kind -> (relative path, how to write it, "embedded" or "skipped")
def make_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Write one file per kind under ``root/<class>/``; returns kind -> (relpath, expected outcome)."""
    rng = np.random.default_rng(3)
    good = lambda: tile(rng, bool(rng.integers(2)))  # noqa: E731
    cases: dict[str, tuple[str, str]] = {}

    def add(kind: str, rel: str, outcome: str, write) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        cases[kind] = (rel, outcome)

    add("zero-byte file", "benign/zero.png", "skipped", lambda p: p.write_bytes(b""))
    add("truncated PNG", "benign/truncated.png", "skipped", lambda p: (good().save(p), _truncate(p)))
    add("truncated JPEG", "benign/truncated.jpg", "skipped", lambda p: (good().save(p, quality=95), _truncate(p)))
    add("text file named .png", "benign/notes.png", "skipped", lambda p: p.write_text("not an image"))
    add("grayscale PNG", "benign/gray.png", "embedded", lambda p: good().convert("L").save(p))
    add("RGBA PNG", "benign/rgba.png", "embedded", lambda p: good().convert("RGBA").save(p))
    add("palette PNG", "benign/palette.png", "embedded", lambda p: good().convert("P").save(p))
    add("16-bit PNG", "malignant/deep.png", "embedded",
        lambda p: Image.fromarray(np.asarray(good().convert("L"), np.uint16) * 257).save(p))
    add("CMYK JPEG", "malignant/cmyk.jpg", "embedded", lambda p: good().convert("CMYK").save(p))
    add("TIFF", "malignant/scan.tif", "embedded", lambda p: good().save(p))
    add("tiny image (< 32 px)", "malignant/tiny.png", "skipped", lambda p: good().resize((16, 12)).save(p))
    add("huge image (over the pixel limit)", "malignant/huge.png", "skipped", lambda p: png_header_only(p, 12_000, 9_000))
    add("decompression bomb", "malignant/bomb.png", "skipped", lambda p: png_header_only(p, 60_000, 60_000))
    add("unicode and spaces in the path", "malignant/Ünïcode dir/späce ✓ name.png", "embedded", lambda p: good().save(p))
    add("duplicate file", "malignant/copy of gray.png", "embedded",
        lambda p: shutil.copyfile(root / "benign/gray.png", p))
    (root / "benign" / "empty folder").mkdir()
    os.symlink(root, root / "malignant" / "loop")
    return cases
