"""What the HTML report shows, read from the store: summary numbers, the backbone comparison,
per-backbone sections, dataset composition and provenance. Nothing here recomputes an analysis."""

from __future__ import annotations

import hashlib
import re
from typing import Any


from toolkit.plugins.exporters.report_training import training_sections
from toolkit.store import Store
from toolkit.lazy import lazy_import

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


def _frame(store: Store, sql: str, params: list[Any], table: str | None = None) -> pd.DataFrame:
    if table is not None and not store.table_exists(table):
        return pd.DataFrame()
    return store.query_df(sql, params)


def _records(store: Store, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return store.query_df(sql, params).to_dict("records")


def probe_metrics(store: Store, run_id: str) -> pd.DataFrame:
    """Binary-label probe metrics (backbone, split, metric, value, ci_low, ci_high), if the probe ran."""
    frame = _frame(store, "SELECT * FROM results_probe WHERE run_id = ? AND target = 'label'", [run_id], "results_probe")
    if frame.empty:
        return frame
    if "class" in frame.columns:
        frame = frame[frame["class"].isna() | frame["metric"].isin(["sensitivity", "specificity"])]
    return frame


def _metric(probe: pd.DataFrame, backbone: str, split: str, metric: str) -> dict[str, float] | None:
    if probe.empty:
        return None
    rows = probe[(probe["backbone"] == backbone) & (probe["split"] == split) & (probe["metric"] == metric)]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return {"value": float(row["value"]), "low": float(row["ci_low"]), "high": float(row["ci_high"])}


def comparison(store: Store, run_id: str, backbones: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per backbone: dim, throughput, significant features, silhouette and probe metrics."""
    probe = probe_metrics(store, run_id)
    significant = _frame(store, """SELECT backbone, count(*) FILTER (WHERE q_val < 0.05) AS n_sig, count(*) AS n
                                   FROM results_ttest WHERE run_id = ? AND level = 'image' GROUP BY backbone""",
                         [run_id], "results_ttest")
    silhouette = _frame(store, """SELECT backbone, silhouette_euclidean AS value FROM results_clustering
                                  WHERE run_id = ? AND partition = 'label'""", [run_id], "results_clustering")
    rows = []
    for b in backbones:
        name = b["backbone"]
        sig = significant[significant["backbone"] == name] if not significant.empty else significant
        sil = silhouette[silhouette["backbone"] == name] if not silhouette.empty else silhouette
        rows.append({
            "backbone": name, "dim": b["dim"], "images_per_second": b["images_per_second"],
            "n_significant": int(sig["n_sig"].iloc[0]) if not sig.empty else None,
            "n_features": int(sig["n"].iloc[0]) if not sig.empty else None,
            "silhouette": float(sil["value"].iloc[0]) if not sil.empty else None,
            "balanced_accuracy": _metric(probe, name, "patient", "balanced_accuracy"),
            "roc_auc": _metric(probe, name, "patient", "roc_auc"),
            "sensitivity": _metric(probe, name, "patient", "sensitivity"),
            "specificity": _metric(probe, name, "patient", "specificity"),
            "leaky_balanced_accuracy": _metric(probe, name, "image", "balanced_accuracy"),
            "leaky_roc_auc": _metric(probe, name, "image", "roc_auc"),
        })
    return rows


def _separation(row: dict[str, Any]) -> tuple[float, float, float]:
    """How well a backbone separates the classes: patient-grouped balanced accuracy, then AUC,
    then silhouette (ties broken in that order)."""
    def value(metric: dict[str, float] | float | None) -> float:
        if metric is None:
            return float("-inf")
        return metric["value"] if isinstance(metric, dict) else float(metric)

    return value(row["balanced_accuracy"]), value(row["roc_auc"]), value(row["silhouette"])


def cka_matrix(store: Store, run_id: str) -> dict[str, Any] | None:
    """Backbone × backbone linear CKA, if the cka analysis ran."""
    frame = _frame(store, "SELECT backbone_a, backbone_b, cka FROM results_cka WHERE run_id = ?", [run_id], "results_cka")
    if frame.empty:
        return None
    names = sorted(set(frame["backbone_a"]) | set(frame["backbone_b"]))
    values = {(a, b): c for a, b, c in frame.itertuples(index=False)}
    cell = lambda a, b: 1.0 if a == b else values.get((a, b), values.get((b, a)))  # noqa: E731
    return {"names": names, "rows": [[cell(a, b) for b in names] for a in names]}


def composition(images: pd.DataFrame) -> dict[str, Any]:
    """Images (and patients) per class and subtype, by magnification."""
    images = images.fillna({"label": "unlabelled", "subtype": "—"})
    magnifications = sorted(int(m) for m in images["magnification"].dropna().unique())
    rows = []
    for (label, subtype), group in images.groupby(["label", "subtype"], sort=True):
        cells = [int((group["magnification"] == m).sum()) for m in magnifications]
        rows.append({"label": label, "subtype": subtype, "cells": cells, "images": len(group),
                     "patients": int(group["patient_id"].nunique())})
    return {"magnifications": magnifications, "rows": rows}


def sections(store: Store, run_id: str, backbones: list[str], redact_ids: dict[str, str],
             order: dict[str, int]) -> list[dict[str, Any]]:
    """Per-backbone sections (then one for analyses over all backbones), analyses by their declared
    ``order`` (``Analysis.order``; unknown analyses last), then by name."""
    analyses = _records(store, "SELECT * FROM analysis_runs WHERE run_id = ?", [run_id])
    findings = _records(store, "SELECT * FROM results_findings WHERE run_id = ?", [run_id])
    figures = _records(store, "SELECT * FROM results_figures WHERE run_id = ? ORDER BY name", [run_id])
    tables = _tables(store, run_id, redact_ids)
    result = []
    for backbone in [*backbones, ""]:
        mine = sorted((a for a in analyses if a["backbone"] == backbone),
                      key=lambda a: (order.get(a["analysis"], float("inf")), a["analysis"]))
        if not mine:
            continue
        pick = lambda items, a: [i for i in items if i["analysis"] == a["analysis"] and i["backbone"] == backbone]  # noqa: E731
        result.append({"backbone": backbone or "all backbones", "anchor": f"section-{backbone or 'all'}",
                       "analyses": [{**a, "findings": pick(findings, a), "figures": pick(figures, a),
                                     "tables": pick(tables, a)} for a in mine]})
    return result


def _tables(store: Store, run_id: str, redact_ids: dict[str, str]) -> list[dict[str, Any]]:
    tables = []
    for entry in _records(store, "SELECT * FROM result_tables WHERE run_id = ? ORDER BY analysis, table_name", [run_id]):
        frame = store.query_df(f"SELECT * EXCLUDE (run_id, backbone) FROM {entry['table_name']} "
                               "WHERE run_id = ? AND backbone = ? LIMIT ?",
                               [run_id, entry["backbone"], MAX_TABLE_ROWS])
        n_rows = store.one(f"SELECT count(*) FROM {entry['table_name']} WHERE run_id = ? AND backbone = ?",
                           [run_id, entry["backbone"]])[0]
        if "patient_id" in frame.columns and redact_ids:
            frame["patient_id"] = [redact_ids.get(p, p) for p in frame["patient_id"]]
        entry.update(columns=list(frame.columns), rows=frame.values.tolist(), n_rows=int(n_rows))
        tables.append(entry)
    return tables


def gather(store: Store, run_id: str, titles: dict[str, str], order: dict[str, int],
           reveal_ids: bool = False) -> dict[str, Any]:
    """Everything the report template shows, read from the store."""
    run = store.run(run_id)
    images = store.query_df("""SELECT i.label, i.subtype, i.magnification, i.patient_id FROM run_images r
                               JOIN images i USING (image_id) WHERE r.run_id = ?""", [run_id])
    ids = {} if reveal_ids else {str(p): pseudonym(p, run_id) for p in images["patient_id"].dropna().unique()}
    backbones = _records(store, "SELECT * FROM run_backbones WHERE run_id = ? ORDER BY backbone", [run_id])
    rows = comparison(store, run_id, backbones)
    ranked = [r for r in rows if r["balanced_accuracy"]]
    best = max(ranked, key=_separation) if ranked else None
    tied = [r["backbone"] for r in ranked if r is not best and _separation(r)[:2] == _separation(best)[:2]]
    analyses = _records(store, "SELECT analysis, backbone, status, message FROM analysis_runs WHERE run_id = ?", [run_id])
    return {
        "run": run,
        "n_images": len(images),
        "n_patients": int(images["patient_id"].nunique()),
        "labels": images["label"].value_counts().sort_index().to_dict(),
        "subtypes": sorted(images["subtype"].dropna().unique()),
        "magnifications": sorted(int(m) for m in images["magnification"].dropna().unique()),
        "composition": composition(images),
        "backbones": backbones,
        "comparison": rows,
        "training": training_sections(store, run_id, [b["backbone"] for b in backbones]),
        "best": best,
        "tied": tied,
        "cka": cka_matrix(store, run_id),
        "sections": sections(store, run_id, [b["backbone"] for b in backbones], ids, order),
        "deployment": _records(store, "SELECT * FROM export_parity WHERE run_id = ? ORDER BY backbone, format", [run_id]),
        "integrity": _records(store, "SELECT DISTINCT message, severity FROM results_findings WHERE run_id = ? "
                                     "AND analysis = 'integrity' ORDER BY severity DESC, message", [run_id]),
        "skipped": _records(store, "SELECT relpath, reason FROM skipped_files WHERE run_id = ? ORDER BY relpath", [run_id]),
        "failures": [a for a in analyses if a["status"] == "failed"] + [b for b in backbones if b["status"] != "ok"],
        "random_backbones": [b["backbone"] for b in backbones if b["weights_kind"] == "random"],
        "analysis_titles": titles,
        "reveal_ids": reveal_ids,
        "redactions": ids,
    }
