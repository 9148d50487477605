"""Image sources: a BreakHis tree, one folder per class, or a CSV manifest -> ImageRecord.

Sources only find files and read metadata; hashing and header checks happen in ``scan.py``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from toolkit.console import printable
from toolkit.errors import TkError
from toolkit.ingest.clinical import check_names

MANIFEST_COLUMNS = ("path", "label", "patient_id", "subtype", "magnification")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

BREAKHIS_SUBTYPES = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>A|F|PT|TA|DC|LC|MC|PC)-(?P<year>\d{2})-(?P<slide>\d+[A-Z]*)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ImageRecord:
    """One image file and what its source says about it."""

    path: Path  # absolute
    relpath: str  # relative to the dataset root, '/'-separated
    source: str  # "breakhis", "folders" or "manifest"
    label: str | None = None
    subtype: str | None = None
    magnification: int | None = None
    patient_id: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Clinical values of this image: raw text from the manifest's extra columns, typed (and only the
    image-level ones kept) by ``toolkit.ingest.clinical.attach_clinical``."""


@dataclass(frozen=True)
class SkippedFile:
    """A file that will not be embedded, and why (one line for the user)."""

    relpath: str
    reason: str


def parse_breakhis_name(name: str) -> dict[str, str | int] | None:
    """Parse ``SOB_M_DC-14-2523-400-002.png`` into label, subtype, patient_id, magnification, seq.

    Returns None when the name does not follow the BreakHis convention.
    """
    match = BREAKHIS_NAME.match(name)
    if not match:
        return None
    code = match["code"].upper()
    label, subtype = BREAKHIS_SUBTYPES[code]
    if (match["cls"].upper() == "B") != (label == "benign"):
        return None
    return {
        "label": label,
        "subtype": subtype,
        "patient_id": f"{match['year']}-{match['slide'].upper()}",
        "magnification": int(match["mag"]),
        "seq": int(match["seq"]),
    }


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` in sorted order, following folder links once (no loops)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("._")


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def breakhis_records(root: Path, skipped: list[SkippedFile]) -> Iterator[ImageRecord]:
    """Images of a BreakHis tree; metadata comes from the file names."""
    for path in walk_files(root):
        if not _is_image(path):
            continue
        meta = parse_breakhis_name(path.name)
        if meta is None:
            skipped.append(SkippedFile(_relpath(path, root),
                                       "name does not follow BreakHis SOB_<B|M>_<CODE>-<YY>-<SLIDE>-<MAG>-<SEQ>.png; rename it or use a CSV manifest"))
            continue
        yield ImageRecord(path, _relpath(path, root), "breakhis", str(meta["label"]), str(meta["subtype"]),
                          int(meta["magnification"]), str(meta["patient_id"]))


def folder_records(root: Path, skipped: list[SkippedFile]) -> Iterator[ImageRecord]:
    """Images of a ``root/<class>/...`` tree; the label is the first folder name."""
    for path in walk_files(root):
        if not _is_image(path):
            continue
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            skipped.append(SkippedFile(rel.as_posix(), "not inside a class folder; move it into root/<class>/"))
            continue
        yield ImageRecord(path, rel.as_posix(), "folders", rel.parts[0])


def manifest_records(csv_path: Path, skipped: list[SkippedFile]) -> Iterator[ImageRecord]:
    """Images listed in a CSV with columns ``path,label[,patient_id,subtype,magnification]``; every
    other column is a clinical variable (kept as raw text in ``ImageRecord.clinical``).

    Relative paths are read from the CSV's folder.
    """
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise TkError(f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the manifest as UTF-8") from exc
    except csv.Error as exc:
        raise TkError(f"{csv_path}: not a readable CSV ({exc}); check quoting and separators") from exc
    columns = set(rows[0]) if rows else set()
    extra = [c for c in (rows[0] if rows else {}) if c is not None and c not in MANIFEST_COLUMNS]
    check_names(extra, csv_path)
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise TkError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; "
                      "the header must include path,label (optional: patient_id,subtype,magnification)")
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            skipped.append(SkippedFile(f"{csv_path.name}:{line}", "empty path; fill in the path column"))
            continue
        try:  # a symlink loop, a too long name or a NUL byte skips this row only
            path = (root / raw).resolve() if not Path(raw).is_absolute() else Path(raw)
            found = path.is_file()
        except (OSError, RuntimeError, ValueError) as exc:
            skipped.append(SkippedFile(f"{csv_path.name}:{line}", f"{printable(raw)[:80]} cannot be opened "
                                       f"({_path_problem(exc)}); fix the path (relative to the CSV's folder)"))
            continue
        if not found:
            skipped.append(SkippedFile(f"{csv_path.name}:{line}", f"{raw} does not exist; fix the path (relative to the CSV's folder)"))
            continue
        magnification = (row.get("magnification") or "").strip().rstrip("xX")
        try:
            mag = int(magnification) if magnification else None
        except ValueError:
            skipped.append(SkippedFile(f"{csv_path.name}:{line}", f"magnification {magnification!r} is not a number"))
            continue
        rel = _relpath(path, root) if path.is_relative_to(root) else path.name
        yield ImageRecord(path, rel, "manifest", (row.get("label") or "").strip() or None,
                          (row.get("subtype") or "").strip() or None, mag,
                          (row.get("patient_id") or "").strip() or None, {c: row.get(c) for c in extra})


def _path_problem(exc: Exception) -> str:
    """A few words on why a manifest path cannot be used."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError):
        return "symlink loop"
    return str(exc)  # ValueError: "embedded null byte"


def detect_source(data: Path) -> str:
    """``manifest`` for a .csv file; ``breakhis`` when the tree holds BreakHis-named images; else ``folders``."""
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return "manifest"
        raise TkError(f"{data}: give a folder of images or a .csv manifest")
    if not data.is_dir():
        raise TkError(f"{data} does not exist; give a folder of images or a .csv manifest")
    for path in walk_files(data):
        if path.name.upper().startswith("SOB_") and _is_image(path):
            return "breakhis"
    return "folders"


def patient_pattern(regex: str) -> re.Pattern[str]:
    """``--patient-from REGEX`` compiled; an invalid one is a one-line error."""
    try:
        return re.compile(regex)
    except re.error as exc:
        raise TkError(f"--patient-from {regex!r} is not a valid regular expression ({exc}); "
                      "e.g. --patient-from 'patient_(\\d+)' takes the digits after patient_") from exc


def patient_from_path(relpath: str, pattern: re.Pattern[str]) -> str | None:
    """The patient id ``pattern`` finds in ``relpath``: its first capture group, or the whole match
    when it has none; None when it does not match (or the group is empty)."""
    match = pattern.search(relpath)
    if match is None:
        return None
    return (match.group(1) if pattern.groups else match.group(0)) or None


def find_images(data: Path, source: str = "auto", patient_from: str | None = None
                ) -> tuple[str, Path, list[ImageRecord], list[SkippedFile]]:
    """Find the images of a dataset: returns (source kind, dataset root, records, skipped files).

    With ``patient_from`` (a regex), every image's patient id is taken from its path relative to the
    dataset root (see :func:`patient_from_path`), replacing what the source says.
    """
    pattern = patient_pattern(patient_from) if patient_from is not None else None
    data = data.expanduser().resolve()
    kind = detect_source(data) if source == "auto" else source
    readers = {"breakhis": breakhis_records, "folders": folder_records, "manifest": manifest_records}
    if kind not in readers:
        raise TkError(f"unknown source {source!r}; use auto, breakhis, folders or manifest")
    skipped: list[SkippedFile] = []
    records = list(readers[kind](data, skipped))
    root = data.parent if kind == "manifest" else data
    if not records and not skipped:
        raise TkError(f"{data}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    records = [r for r in records if _utf8_name(r, skipped)]
    if pattern is not None:
        records = [replace(r, patient_id=patient_from_path(r.relpath, pattern)) for r in records]
    return kind, root, records, skipped


def _utf8_name(record: ImageRecord, skipped: list[SkippedFile]) -> bool:
    """Whether ``record``'s path is valid UTF-8 (the store keeps text); otherwise it is skipped, named in an
    escaped form (``bad\\xff.png``) that the store and the terminal can hold."""
    try:
        str(record.path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        skipped.append(SkippedFile(printable(record.relpath),
                                   "file name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8)"))
        return False
