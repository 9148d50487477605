"""The report's "Exported models" section: size, latency and parity of every model the TFLite and
SavedModel exporters wrote from the run (table ``export_parity``)."""

from __future__ import annotations

from pathlib import Path

from toolkit import ReportContext, ReportSection, hookimpl
from toolkit.plugins.exporters.parity import PARITY, export_parity_warning

TEMPLATE = Path(__file__).parent / "templates" / "deployment.html"


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """"Exported models": size, latency and parity of every model exported from the run."""
    rows = context.store.tables.rows(PARITY, where={"run_id": context.run_id}, order_by=("backbone", "format"))
    if rows.empty:
        return []
    records = rows.to_dict("records")
    warnings = [export_parity_warning(r["backbone"], r["format"], r) for r in records]
    return [ReportSection("Exported models", slot="models", order=20, anchor="deployment", template=TEMPLATE,
                          data={"deployment": records, "parity_warnings": [w for w in warnings if w]})]
