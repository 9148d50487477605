"""The report's "Stain normalisation" section: the method and reference a run normalised its images
with, how many images were left unchanged, and a strip of thumbnails before and after."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit import ReportContext, ReportSection, hookimpl
from toolkit import STAIN_RUNS as RUNS

TEMPLATE = Path(__file__).parent / "templates" / "stain.html"


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """"Stain normalisation", for a run that normalised its images (``tk run --stain``)."""
    rows = context.store.tables.rows(RUNS, where={"run_id": context.run_id})
    if rows.empty:
        return []
    row = rows.iloc[0].to_dict()
    strip = row["strip"] if isinstance(row["strip"], list) else json.loads(row["strip"] or "[]")
    reference = Path(row["reference_path"]).name if row["reference_path"] else "the method's built-in reference"
    return [ReportSection("Stain normalisation", slot="dataset", order=50, anchor="stain", template=TEMPLATE, data={
        "stain": {**row, "reference": reference, "n_normalised": int(row["n_normalised"]),
                  "n_unchanged": int(row["n_unchanged"]), "seconds": float(row["seconds"] or 0.0)},
        "strip": strip})]
