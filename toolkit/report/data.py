"""What the HTML report shows that belongs to no plugin, read from the store: the run, its images
and their composition, each backbone's analyses (findings, figures, tables), failures and skipped
files. Nothing here recomputes an analysis or names one."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Iterable

import numpy as np

from toolkit.lazy import lazy_import
from toolkit.plugin.registry import Registry
from toolkit.plugin.results import PATIENT_REF
from toolkit.store import StoreReader

pd = lazy_import("pandas")

MAX_TABLE_ROWS = 20


PSEUDONYM_HEX = 10
"""Hex digits of a pseudonym after ``P-``: collisions stay unlikely among many thousands of patients."""

SHORT_NUMBER = re.compile(r"[0-9]{1,3}")
"""Ids that free text is not searched for unmarked: they would replace counts (``2 pairs``). Analyses
mark the ids they write (``toolkit.plugin.results.patient_ref``), and file paths, which hold no counts,
are searched for them too."""

PATH_COLUMN = re.compile(r"(?:^|_)(?:rel)?path$")
"""Table columns that hold file paths (``relpath``, ``path``, ``query_path``)."""


def _alternatives(ids: Iterable[str]) -> str:
    return "|".join(map(re.escape, sorted(ids, key=len, reverse=True)))


class Pseudonyms:
    """What the report shows for patient ids, applied to the data before rendering (never to HTML).

    A pseudonym is ``P-`` + the first hex digits of HMAC-SHA256(store secret, ``run_id:id``): stable
    within a run's report, and not recoverable without the store. With ``key`` None (``--reveal-ids``)
    ids are shown as they are.
    """

    def __init__(self, ids: Iterable[str], key: bytes | None, run_id: str) -> None:
        self.key, self.run_id = key, run_id
        known = {str(i) for i in ids if i}
        opening, closing = (re.escape(part) for part in PATIENT_REF.split("{}"))
        known_first = f"{_alternatives(known)}|" if known else ""
        self._marked = re.compile(f"{opening}({known_first}.*?){closing}", re.DOTALL)
        self._patterns = {}
        for kind, searched in (("text", {i for i in known if not SHORT_NUMBER.fullmatch(i)}), ("path", known)):
            if key is not None and searched:
                self._patterns[kind] = re.compile(f"(?<![A-Za-z0-9])(?:{_alternatives(searched)})(?![A-Za-z0-9])")

    def __call__(self, patient_id: Any) -> str:
        """The pseudonym of one patient id (``—`` for none)."""
        if patient_id is None or patient_id != patient_id:
            return "—"
        if self.key is None:
            return str(patient_id)
        digest = hmac.new(self.key, f"{self.run_id}:{patient_id}".encode(), hashlib.sha256).hexdigest()
        return "P-" + digest[:PSEUDONYM_HEX]

    def text(self, value: Any, kind: str = "text") -> Any:
        """``value`` with every patient id marked in it (``patient_ref``) and every known id in it (a
        whole token, not part of a longer word or number; short numbers only in a ``kind="path"``)
        replaced by its pseudonym; anything but a string is returned as it is."""
        if not isinstance(value, str):
            return value
        pattern = self._patterns.get(kind)

        def searched(piece: str) -> str:
            return pattern.sub(lambda m: self(m.group(0)), piece) if pattern else piece

        pieces = self._marked.split(value)  # text, marked id, text, ...: marked ids are never searched again
        return "".join(self(piece) if index % 2 else searched(piece) for index, piece in enumerate(pieces))

    def path(self, value: Any) -> Any:
        """A file path with every known patient id in it replaced, short ones included (see ``text``)."""
        return self.text(value, "path")

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of a table with its ``patient_id`` column pseudonymised and ids in text cells replaced
        (in path columns, ``relpath`` and the like, short ids too)."""
        shown = frame.copy()
        for column in shown.columns:
            if column == "patient_id" and self.key is not None:
                shown[column] = [p if p is None or p != p else self(p) for p in shown[column]]
            elif shown[column].dtype == object or pd.api.types.is_string_dtype(shown[column].dtype):
                kind = "path" if PATH_COLUMN.search(str(column)) else "text"
                shown[column] = [self.text(v, kind) for v in shown[column]]
        return shown

    def records(self, records: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
        """``records`` with ids in the named text fields replaced."""
        return [{**r, **{f: self.text(r.get(f)) for f in fields}} for r in records]


def known_patients(patient_ids: pd.Series) -> int | None:
    """How many patients the images come from; None when no image has a patient id (the report
    says "patient unknown" then, never 0)."""
    known = patient_ids.dropna()
    return int(known.nunique()) if len(known) else None


def estimate(rows: pd.DataFrame, **where: object) -> dict[str, float] | None:
    """The first row of a metrics table (value, ci_low, ci_high) matching ``where`` (column=value;
    ``None`` matches a missing value), as the report's interval macros take it; None when none matches."""
    keep = np.ones(len(rows), dtype=bool)
    for column, value in where.items():
        keep &= (rows[column].isna() if value is None else rows[column] == value).to_numpy()
    if not keep.any():
        return None
    row = rows[keep].iloc[0]
    return {"value": float(row["value"]), "low": float(row["ci_low"]), "high": float(row["ci_high"])}


def composition(images: pd.DataFrame, pseudonyms: Pseudonyms) -> dict[str, Any]:
    """Images (and patients: None when unknown) per class and subtype, by magnification; a patient id
    in a class or subtype name is shown as its pseudonym."""
    images = images.fillna({"label": "unlabelled", "subtype": "—"})
    magnifications = sorted(int(m) for m in images["magnification"].dropna().unique())
    rows = []
    for (label, subtype), group in images.groupby(["label", "subtype"], sort=True):
        cells = [int((group["magnification"] == m).sum()) for m in magnifications]
        rows.append({"label": pseudonyms.text(label), "subtype": pseudonyms.text(subtype), "cells": cells,
                     "images": len(group), "patients": known_patients(group["patient_id"])})
    return {"magnifications": magnifications, "rows": rows}


UNFINISHED = {"failed": "This run failed", "interrupted": "This run was interrupted",
              "running": "This run has not finished"}


def unfinished(run: dict[str, Any]) -> dict[str, str] | None:
    """For a run that did not finish (failed, interrupted, still running): a title and why, for the
    report's banner; None for a finished run (ok or partial)."""
    title = UNFINISHED.get(run["status"])
    if title is None:
        return None
    error = run.get("error")
    why = error if isinstance(error, str) and error else "no reason was recorded"
    return {"title": f"{title}: the results below are incomplete or empty.", "why": why}


def table_record(name: str, description: str, frame: pd.DataFrame, n_rows: int) -> dict[str, Any]:
    """A table as the report's ``result_table`` macro shows it (first rows only)."""
    shown = frame.head(MAX_TABLE_ROWS)
    return {"table_name": name, "description": description, "columns": list(map(str, shown.columns)),
            "rows": shown.values.tolist(), "n_rows": int(n_rows)}


def analysis_sections(store: StoreReader, run_id: str, backbones: list[str], pseudonyms: Pseudonyms,
                      registry: Registry) -> list[dict[str, Any]]:
    """Per-backbone sections (then one for analyses over all backbones); analyses by their declared
    ``order`` (unknown analyses last), then by name, each with its findings, figures and tables
    (patient ids in them pseudonymised)."""
    order = {name: a.order for name, a in registry.analyses.items()}
    analyses = pseudonyms.records(store.results.run_analyses(run_id), "message")
    findings = pseudonyms.records(store.results.run_findings(run_id), "message")
    figures = pseudonyms.records(store.results.run_figures(run_id), "alt", "caption")
    tables = []
    for entry in store.results.run_result_tables(run_id, MAX_TABLE_ROWS):
        frame = pseudonyms.frame(entry["frame"])
        tables.append({**entry, **table_record(entry["table_name"], entry["description"], frame, entry["n_rows"])})
    result = []
    for backbone in [*backbones, ""]:
        mine = sorted((a for a in analyses if a["backbone"] == backbone),
                      key=lambda a: (order.get(a["analysis"], float("inf")), a["analysis"]))
        if not mine:
            continue

        def pick(items: list[dict[str, Any]], analysis: dict[str, Any]) -> list[dict[str, Any]]:
            return [i for i in items if i["analysis"] == analysis["analysis"] and i["backbone"] == backbone]

        result.append({"backbone": backbone or "all backbones", "anchor": f"section-{backbone or 'all'}",
                       "analyses": [{**a, "findings": pick(findings, a), "figures": pick(figures, a),
                                     "tables": pick(tables, a)} for a in mine]})
    return result


def gather(store: StoreReader, run_id: str, registry: Registry, reveal_ids: bool = False) -> dict[str, Any]:
    """Everything the report template shows that no plugin contributes, read from the store, with
    patient ids pseudonymised (unless ``reveal_ids``) before anything is rendered."""
    images = store.images.run_images(run_id)
    pseudonyms = Pseudonyms(images["patient_id"].dropna().unique(), None if reveal_ids else store.runs.report_secret(),
                            run_id)
    run = store.runs.run(run_id)
    run = {**run, "error": pseudonyms.text(run.get("error")),
           "warnings": [pseudonyms.text(w) for w in run.get("warnings") or []]}
    backbones = store.runs.run_backbones(run_id)
    analyses = pseudonyms.records(store.results.run_analyses(run_id), "message")
    labels = images["label"].value_counts().sort_index().to_dict()
    return {
        "run": run,
        "unfinished": unfinished(run),
        "nothing_stored": run["status"] in UNFINISHED and images.empty,
        "n_images": len(images),
        "n_patients": known_patients(images["patient_id"]),
        "n_patient_unknown": int(images["patient_id"].isna().sum()),
        "labels": {pseudonyms.text(label): count for label, count in labels.items()},
        "subtypes": sorted(images["subtype"].dropna().unique()),
        "magnifications": sorted(int(m) for m in images["magnification"].dropna().unique()),
        "composition": composition(images, pseudonyms),
        "backbones": backbones,
        "sections": analysis_sections(store, run_id, [b["backbone"] for b in backbones], pseudonyms, registry),
        "skipped": [{**r, "relpath": pseudonyms.path(r["relpath"]), "reason": pseudonyms.text(r["reason"])}
                    for r in store.runs.skipped_files(run_id)],
        "failures": ([a for a in analyses if a["status"] == "failed"]
                     + pseudonyms.records([b for b in backbones if b["status"] != "ok"], "error")),
        "random_backbones": [b["backbone"] for b in backbones if b["weights_kind"] == "random"],
        "demo": bool((run["settings"] or {}).get("demo")),
        "analysis_titles": {name: a.title or name for name, a in registry.analyses.items()},
        "reveal_ids": reveal_ids,
        "one_off_secret": "m007_store_secrets" in store.stand_ins,  # an old store opened read-only
        "pseudonyms": pseudonyms,
    }
