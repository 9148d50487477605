"""Clinical variables: the extra columns of a CSV manifest and a ``--clinical`` CSV keyed by patient.

Every column is typed once over all its values (see :func:`infer_kind`): ``numeric`` when every
non-missing value parses as a number, ``categorical`` when it has at most ``MAX_LEVELS`` distinct
values and each is seen in at least ``MIN_LEVEL_COUNT`` patients (images, without patient ids),
otherwise free text, which is dropped
with a warning (free text can name or describe a patient). ``--clinical-type NAME=KIND`` overrides
the inference (``categorical``, ``numeric`` or ``drop``).

A column is stored per patient when it is constant within every patient (``level = 'patient'``),
else per image; the values of a ``--clinical`` CSV are always per patient.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import TkError

KINDS = ("categorical", "numeric")
OVERRIDES = (*KINDS, "drop")
MAX_LEVELS = 20
MIN_LEVEL_COUNT = 2
MISSING = {"", "na", "n/a", "nan", "none", "null", "missing", "?", "-"}
CORE_COLUMNS = ("path", "label", "patient_id", "subtype", "magnification", "image_id", "sha256", "relpath",
                "width", "height")
"""Metadata columns of every image: a clinical column may not take one of these names."""


@dataclass(frozen=True)
class ClinicalColumn:
    """One kept clinical column of a run.

    :param kind: ``categorical`` or ``numeric``.
    :param level: ``patient`` (constant within every patient) or ``image``.
    :param source: ``manifest`` or the ``--clinical`` file's name.
    """

    name: str
    kind: str
    level: str
    source: str


@dataclass
class ClinicalData:
    """The clinical columns of a run, their per-patient values, and what was said about them."""

    columns: list[ClinicalColumn]
    patient_values: dict[str, dict[str, Any]]  # column -> patient_id -> value (patient-level columns)
    warnings: list[str]


def is_missing(raw: str | None) -> bool:
    """Whether a CSV cell holds no value (empty, NA, n/a, nan, none, null, missing, ?, -)."""
    return raw is None or raw.strip().lower() in MISSING


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def infer_kind(values: list[str | None], patients: list[str | None] | None = None) -> str:
    """``numeric``, ``categorical`` or ``free_text`` for a column's raw values (see the module doc).

    With ``patients`` (one per value, all known), a categorical level must be seen in at least
    ``MIN_LEVEL_COUNT`` patients, not images: a value unique to one patient (a name) repeated on each
    of the patient's images stays free text."""
    present = [(v.strip(), i) for i, v in enumerate(values) if not is_missing(v)]
    if not present:
        return "free_text"
    if all(_number(v) is not None for v, _ in present):
        return "numeric"
    by_patient = patients is not None and all(p is not None for p in patients)
    seen: dict[str, set] = {}
    for value, row in present:
        seen.setdefault(value, set()).add(patients[row] if by_patient else row)
    if len(seen) <= MAX_LEVELS and min(len(units) for units in seen.values()) >= MIN_LEVEL_COUNT:
        return "categorical"
    return "free_text"


def parse_overrides(assignments: list[str]) -> dict[str, str]:
    """``--clinical-type NAME=KIND`` values as a dict; a malformed one is a one-line error."""
    overrides: dict[str, str] = {}
    for assignment in assignments:
        name, sep, kind = assignment.partition("=")
        if not sep or not name.strip() or kind.strip() not in OVERRIDES:
            raise TkError(f"--clinical-type {assignment!r}: write NAME=KIND with KIND one of {', '.join(OVERRIDES)}")
        overrides[name.strip()] = kind.strip()
    return overrides


def typed_value(raw: str | None, kind: str) -> float | str | None:
    """A raw cell as its kind's value: a float (numeric), a stripped text (categorical) or None."""
    if is_missing(raw):
        return None
    if kind == "numeric":
        return _number(raw)
    return raw.strip()


def check_names(names: list[str], origin: Path) -> None:
    """Refuse clinical columns named like core metadata columns (or twice)."""
    clash = [n for n in names if n.strip().lower() in CORE_COLUMNS]
    if clash:
        raise TkError(f"{origin}: clinical column {clash[0]!r} has the name of a core metadata column "
                      f"({', '.join(CORE_COLUMNS)}); rename it in the CSV")
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise TkError(f"{origin}: a column has an empty header; name it or delete it")
        if name in seen:
            raise TkError(f"{origin}: column {name!r} appears twice; rename one")
        seen.add(name)


def choose_kinds(columns: dict[str, list[str | None]], overrides: dict[str, str], origin: Path,
                 warnings: list[str], patients: list[str | None] | None = None) -> dict[str, str]:
    """The kind of every column (overrides first; ``patients`` as in :func:`infer_kind`); free-text
    and ``drop`` columns are left out, each with a one-line warning that says how to keep it."""
    kinds: dict[str, str] = {}
    for name, values in columns.items():
        kind = overrides.get(name) or infer_kind(values, patients)
        if kind == "drop":
            warnings.append(f"{origin.name}: clinical column {name!r} dropped (--clinical-type {name}=drop)")
            continue
        if kind == "free_text":
            warnings.append(f"{origin.name}: clinical column {name!r} looks like free text (not all numbers; more than "
                            f"{MAX_LEVELS} distinct values or a value of a single patient) and is dropped: free text can "
                            f"identify a patient. Keep it with --clinical-type {name}=categorical if its values are "
                            "categories")
            continue
        if kind == "numeric":
            bad = [v for v in values if not is_missing(v) and _number(v) is None]
            if bad:
                raise TkError(f"{origin}: clinical column {name!r} is set numeric but holds {bad[0]!r}; fix the value "
                              f"or use --clinical-type {name}=categorical")
        kinds[name] = kind
    return kinds


def read_clinical_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str | None]]]:
    """A ``--clinical`` CSV: its clinical column names and, by patient_id, each patient's raw values."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError as exc:
        raise TkError(f"--clinical {path}: no such file; give a CSV with a patient_id column") from exc
    except UnicodeDecodeError as exc:
        raise TkError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except csv.Error as exc:
        raise TkError(f"{path}: not a readable CSV ({exc}); check quoting and separators") from exc
    if "patient_id" not in header:
        raise TkError(f"{path}: a --clinical CSV needs a patient_id column (one row per patient); add it to the header")
    names = [h for h in header if h != "patient_id"]
    check_names(names, path)
    by_patient: dict[str, dict[str, str | None]] = {}
    for line, row in enumerate(rows, start=2):
        patient = (row.get("patient_id") or "").strip()
        if not patient:
            raise TkError(f"{path}:{line}: empty patient_id; fill it in or delete the row")
        if patient in by_patient:
            raise TkError(f"{path}:{line}: patient {patient!r} has a second row; keep one row per patient")
        by_patient[patient] = {name: row.get(name) for name in names}
    return names, by_patient


def constant_within_patients(values: list[Any], patients: list[str | None]) -> bool:
    """Whether every patient's images share one value (missing counts as a value); False without
    patient ids."""
    seen: dict[str, Any] = {}
    for value, patient in zip(values, patients):
        if patient is None:
            return False
        if seen.setdefault(patient, value) != value:
            return False
    return bool(seen)


def attach_clinical(records: list[Any], clinical: Path | None, overrides: dict[str, str],
                    manifest: Path | None) -> tuple[list[Any], ClinicalData]:
    """Type the records' manifest columns (``record.clinical`` holds raw text) and join a ``--clinical``
    CSV by patient_id; returns the records with their image-level values only (typed) and the run's
    clinical data. Patients of the data missing from the CSV get missing values; CSV patients not in
    the data are counted in a warning."""
    warnings: list[str] = []
    raw: dict[str, list[str | None]] = {}
    for record in records:
        for name in record.clinical:
            raw.setdefault(name, [])
    for name in raw:
        raw[name] = [record.clinical.get(name) for record in records]
    file_names: list[str] = []
    by_patient: dict[str, dict[str, str | None]] = {}
    if clinical is not None:
        file_names, by_patient = read_clinical_csv(clinical)
        both = sorted(set(file_names) & set(raw))
        if both:
            raise TkError(f"{clinical}: column {both[0]!r} is also a column of the manifest; keep it in one of them")
        patients = {r.patient_id for r in records if r.patient_id is not None}
        unknown = len(set(by_patient) - patients)
        if unknown:
            warnings.append(f"{clinical.name}: {unknown} patient{'s' if unknown != 1 else ''} of the clinical CSV "
                            "not in the data (ignored); check that its patient_id values match the images'")
        if not patients:
            warnings.append(f"{clinical.name}: no image has a patient id, so no clinical value can be joined; give "
                            "patient ids (--patient-from REGEX or a manifest patient_id column)")
    unknown_overrides = sorted(set(overrides) - set(raw) - set(file_names))
    if unknown_overrides:
        raise TkError(f"--clinical-type {unknown_overrides[0]}: no such clinical column; the columns are "
                      f"{', '.join([*raw, *file_names]) or 'none'}")
    kinds = choose_kinds(raw, overrides, manifest or Path("manifest"), warnings, [r.patient_id for r in records])
    file_kinds = (choose_kinds({n: [v[n] for v in by_patient.values()] for n in file_names}, overrides, clinical,
                               warnings) if clinical is not None else {})
    columns: list[ClinicalColumn] = []
    patient_values: dict[str, dict[str, Any]] = {}
    patients_of = [r.patient_id for r in records]
    image_values: dict[str, list[Any]] = {}
    for name, kind in kinds.items():
        values = [typed_value(v, kind) for v in raw[name]]
        if constant_within_patients(values, patients_of):
            columns.append(ClinicalColumn(name, kind, "patient", "manifest"))
            patient_values[name] = {p: v for p, v in zip(patients_of, values)}
        else:
            columns.append(ClinicalColumn(name, kind, "image", "manifest"))
            image_values[name] = values
    for name, kind in file_kinds.items():
        columns.append(ClinicalColumn(name, kind, "patient", clinical.name))
        patient_values[name] = {p: typed_value(v[name], kind) for p, v in by_patient.items() if p in patients_of}
    records = [replace(r, clinical={n: image_values[n][i] for n in image_values})
               for i, r in enumerate(records)]
    return records, ClinicalData(columns, patient_values, warnings)
