"""What the HTML report shows that belongs to no plugin, read from the store: the run, its images
and their composition, each backbone's analyses (findings, figures, tables), failures and skipped
files. Nothing here recomputes an analysis or names one."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from toolkit.lazy import lazy_import
from toolkit.plugin.registry import Registry
from toolkit.store import Store

pd = lazy_import("pandas")

MAX_TABLE_ROWS = 20


def pseudonym(patient_id: Any, salt: str) -> str:
    """A stable stand-in for a patient id within one report (``P-`` + 6 hex digits)."""
    if patient_id is None or patient_id != patient_id:
        return "—"
    return "P-" + hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:6]


def redact(text: str, replacements: dict[str, str]) -> str:
    """Replace every patient id in ``text`` with its pseudonym (longest ids first)."""
    if not replacements:
        return text
    pattern = re.compile("|".join(re.escape(k) for k in sorted(replacements, key=len, reverse=True)))
    return pattern.sub(lambda m: replacements[m.group(0)], text)


def known_patients(patient_ids: pd.Series) -> int | None:
    """How many patients the images come from; None when no image has a patient id (the report
    says "patient unknown" then, never 0)."""
    known = patient_ids.dropna()
    return int(known.nunique()) if len(known) else None


def composition(images: pd.DataFrame) -> dict[str, Any]:
    """Images (and patients: None when unknown) per class and subtype, by magnification."""
    images = images.fillna({"label": "unlabelled", "subtype": "—"})
    magnifications = sorted(int(m) for m in images["magnification"].dropna().unique())
    rows = []
    for (label, subtype), group in images.groupby(["label", "subtype"], sort=True):
        cells = [int((group["magnification"] == m).sum()) for m in magnifications]
        rows.append({"label": label, "subtype": subtype, "cells": cells, "images": len(group),
                     "patients": known_patients(group["patient_id"])})
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


def analysis_sections(store: Store, run_id: str, backbones: list[str], redactions: dict[str, str],
                      registry: Registry) -> list[dict[str, Any]]:
    """Per-backbone sections (then one for analyses over all backbones); analyses by their declared
    ``order`` (unknown analyses last), then by name, each with its findings, figures and tables."""
    order = {name: a.order for name, a in registry.analyses.items()}
    analyses = store.run_analyses(run_id)
    findings = store.run_findings(run_id)
    figures = store.run_figures(run_id)
    tables = []
    for entry in store.run_result_tables(run_id, MAX_TABLE_ROWS):
        frame = entry["frame"]
        if "patient_id" in frame.columns and redactions:
            frame["patient_id"] = [redactions.get(p, p) for p in frame["patient_id"]]
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


def gather(store: Store, run_id: str, registry: Registry, reveal_ids: bool = False) -> dict[str, Any]:
    """Everything the report template shows that no plugin contributes, read from the store."""
    run = store.run(run_id)
    images = store.run_images(run_id)
    ids = {} if reveal_ids else {str(p): pseudonym(p, run_id) for p in images["patient_id"].dropna().unique()}
    backbones = store.run_backbones(run_id)
    analyses = store.run_analyses(run_id)
    return {
        "run": run,
        "unfinished": unfinished(run),
        "n_images": len(images),
        "n_patients": known_patients(images["patient_id"]),
        "n_patient_unknown": int(images["patient_id"].isna().sum()),
        "labels": images["label"].value_counts().sort_index().to_dict(),
        "subtypes": sorted(images["subtype"].dropna().unique()),
        "magnifications": sorted(int(m) for m in images["magnification"].dropna().unique()),
        "composition": composition(images),
        "backbones": backbones,
        "sections": analysis_sections(store, run_id, [b["backbone"] for b in backbones], ids, registry),
        "skipped": store.skipped_files(run_id),
        "failures": [a for a in analyses if a["status"] == "failed"] + [b for b in backbones if b["status"] != "ok"],
        "random_backbones": [b["backbone"] for b in backbones if b["weights_kind"] == "random"],
        "demo": bool((run["settings"] or {}).get("demo")),
        "analysis_titles": {name: a.title or name for name, a in registry.analyses.items()},
        "reveal_ids": reveal_ids,
        "redactions": ids,
    }
