"""The HTML report: one self-contained file per run, rendered from the store (nothing recomputed)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from toolkit import __version__, hookimpl
from toolkit.kinds import ExportContext, Exporter
from toolkit.registry import load_registry
from toolkit.render import make_environment, write_atomically
from toolkit.store import Store

MAX_TABLE_ROWS = 20
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
       "script-src 'none'; base-uri 'none'; form-action 'none'")


def pseudonym(patient_id: Any, salt: str) -> str:
    """A stable stand-in for a patient id within one report (``P-`` + 6 hex digits)."""
    if patient_id is None or patient_id != patient_id:
        return "—"
    return "P-" + hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:6]


def report_path(out_dir: Path, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return out_dir / f"tk-report-{safe}.html"


def _records(store: Store, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return store.query_df(sql, params).to_dict("records")


def gather(store: Store, run_id: str, titles: dict[str, str], reveal_ids: bool = False) -> dict[str, Any]:
    """Everything the template shows, read from the store."""
    run = store.run(run_id)
    images = store.query_df("""SELECT i.label, i.subtype, i.magnification, i.patient_id FROM run_images r
                               JOIN images i USING (image_id) WHERE r.run_id = ?""", [run_id])
    composition = (images.fillna({"subtype": "—", "label": "unlabelled"})
                   .groupby(["label", "subtype"], dropna=False)
                   .agg(images=("label", "size"), patients=("patient_id", "nunique"))
                   .reset_index().to_dict("records"))
    by_magnification = images.groupby("magnification").size().to_dict() if images["magnification"].notna().any() else {}
    backbones = _records(store, "SELECT * FROM run_backbones WHERE run_id = ? ORDER BY backbone", [run_id])
    analyses = _records(store, "SELECT * FROM analysis_runs WHERE run_id = ? ORDER BY analysis, backbone", [run_id])
    findings = _records(store, "SELECT * FROM results_findings WHERE run_id = ?", [run_id])
    figures = _records(store, "SELECT * FROM results_figures WHERE run_id = ?", [run_id])
    tables = []
    for entry in _records(store, "SELECT * FROM result_tables WHERE run_id = ? ORDER BY analysis, table_name", [run_id]):
        frame = store.query_df(f"SELECT * EXCLUDE (run_id, backbone) FROM {entry['table_name']} "
                               "WHERE run_id = ? AND backbone = ?", [run_id, entry["backbone"]])
        if "patient_id" in frame.columns and not reveal_ids:
            frame["patient_id"] = [pseudonym(p, run_id) for p in frame["patient_id"]]
        entry.update(columns=list(frame.columns), rows=frame.head(MAX_TABLE_ROWS).values.tolist(),
                     n_rows=len(frame))
        tables.append(entry)
    sections = []
    for backbone in [b["backbone"] for b in backbones] + [""]:
        section_analyses = [a for a in analyses if a["backbone"] == backbone]
        if not section_analyses:
            continue
        sections.append({
            "backbone": backbone or "all backbones",
            "analyses": [{
                **a,
                "findings": [f for f in findings if f["analysis"] == a["analysis"] and f["backbone"] == backbone],
                "figures": [f for f in figures if f["analysis"] == a["analysis"] and f["backbone"] == backbone],
                "tables": [t for t in tables if t["analysis"] == a["analysis"] and t["backbone"] == backbone],
            } for a in section_analyses],
        })
    skipped = _records(store, "SELECT relpath, reason FROM skipped_files WHERE run_id = ? ORDER BY relpath", [run_id])
    random_backbones = [b["backbone"] for b in backbones if b["weights_kind"] == "random"]
    return {
        "run": run,
        "n_images": len(images),
        "n_patients": int(images["patient_id"].nunique()),
        "labels": images["label"].value_counts().to_dict(),
        "by_magnification": by_magnification,
        "composition": composition,
        "backbones": backbones,
        "sections": sections,
        "skipped": skipped,
        "failures": [a for a in analyses if a["status"] == "failed"] + [b for b in backbones if b["status"] != "ok"],
        "random_backbones": random_backbones,
        "analysis_titles": titles,
        "csp": CSP,
        "tk_version": __version__,
    }


def export_report(context: ExportContext, out_dir: Path) -> list[Path]:
    """Render ``report.html`` for the run into ``out_dir`` (written atomically)."""
    registry = load_registry(context.settings.get("plugins", []))
    env = make_environment(context.template_dir, registry.pm)
    titles = {name: a.title or name for name, a in registry.analyses.items()}
    data = gather(context.store, context.run_id, titles, reveal_ids=bool(context.settings.get("reveal_ids")))
    html = env.get_template("report.html").render(**data)
    path = report_path(out_dir, context.run_id)
    write_atomically(path, html)
    return [path]


@hookimpl
def register_exporters(register):
    """Register ``html`` (the run's report; on by default)."""
    register(Exporter(name="html", export=export_report, default=True,
                      description="Self-contained HTML report of the run"))
