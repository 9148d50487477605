"""What the probe contributes to the report: the summary's verdict on the backbones, its columns of
the comparison table, and the model card."""

from __future__ import annotations

from pathlib import Path

from toolkit import ComparisonColumn, ReportContext, ReportSection, lazy_import, metric_estimate
from toolkit.plugins.analyses.protocols import PATIENT_CV, PROTOCOLS

pd = lazy_import("pandas")

SUMMARY_TEMPLATE = Path(__file__).parent / "templates" / "probe_summary.html"


def backbone_estimates(context: ReportContext) -> list[dict]:
    """Per backbone of the run: patient-split balanced accuracy, AUC, sensitivity and specificity,
    and the leaky image-split balanced accuracy (binary label target), each with its interval."""
    metrics = context.store.results.run_results(context.run_id, "probe")
    if metrics.empty:
        return []
    if "protocol" in metrics:  # results stored before protocols existed have none: all patient-cv
        metrics = metrics[metrics["protocol"].fillna(PATIENT_CV) == PATIENT_CV]
    metrics = metrics[(metrics["target"] == "label")
                      & (metrics["class"].isna() | metrics["metric"].isin(["sensitivity", "specificity"]))]
    rows = []
    for name in context.backbone_names:
        rows.append({"backbone": name, **{key: metric_estimate(metrics, backbone=name, split=split, metric=metric) for key, split, metric in (
            ("balanced_accuracy", "patient", "balanced_accuracy"), ("roc_auc", "patient", "roc_auc"),
            ("sensitivity", "patient", "sensitivity"), ("specificity", "patient", "specificity"),
            ("patient_score", "patient", "patient_score"),
            ("leaky_balanced_accuracy", "image", "balanced_accuracy"))}})
    return rows


def paired_verdict(context: ReportContext, best: dict | None) -> dict | None:
    """Whether the best backbone is clearly better than the others (``backbone_comparison``): the
    paired differences in balanced accuracy against it, and ``unclear`` when one interval includes 0.
    None when there is nothing to compare."""
    comparison = context.store.results.run_results(context.run_id, "backbone_comparison")
    if best is None or comparison.empty:
        return None
    rows = comparison[(comparison["metric"] == "balanced_accuracy")
                      & ((comparison["backbone_a"] == best["backbone"]) | (comparison["backbone_b"] == best["backbone"]))]
    differences = []
    for r in rows.itertuples():
        sign = 1 if r.backbone_a == best["backbone"] else -1
        low, high = sorted((round(sign * r.ci_low, 6) + 0.0, round(sign * r.ci_high, 6) + 0.0))  # no -0.00
        differences.append({"other": r.backbone_b if sign == 1 else r.backbone_a,
                            "value": round(sign * r.diff, 6) + 0.0, "low": low, "high": high})
    return {"differences": differences, "unclear": any(d["low"] <= 0 for d in differences)}


def _silhouettes(context: ReportContext) -> dict[str, float]:
    """The label silhouette per backbone, when clustering ran (it breaks ties between backbones)."""
    clustering = context.store.results.run_results(context.run_id, "clustering")
    if clustering.empty:
        return {}
    labels = clustering[clustering["partition"] == "label"]
    return dict(zip(labels["backbone"], labels["silhouette_euclidean"].astype(float)))


def best_backbone(rows: list[dict], silhouettes: dict[str, float]) -> tuple[dict | None, list[str]]:
    """The backbone that separates the classes best (patient-split balanced accuracy, then AUC, then
    silhouette) and the others tied with it on balanced accuracy and AUC."""
    def separation(row: dict) -> tuple[float, float, float]:
        value = lambda m: m["value"] if m else float("-inf")  # noqa: E731
        return value(row["balanced_accuracy"]), value(row["roc_auc"]), silhouettes.get(row["backbone"], float("-inf"))

    ranked = [r for r in rows if r["balanced_accuracy"]]
    if not ranked:
        return None, []
    best = max(ranked, key=separation)
    return best, [r["backbone"] for r in ranked if r is not best and separation(r)[:2] == separation(best)[:2]]


def summary_section(context: ReportContext) -> list[ReportSection]:
    """The summary's verdict on the backbones and the probe's columns of the comparison table."""
    rows = backbone_estimates(context)
    best, tied = best_backbone(rows, _silhouettes(context))
    paired = paired_verdict(context, best)
    column = lambda key: {r["backbone"]: r[key] for r in rows}  # noqa: E731
    highlighted = best["backbone"] if best and not (paired and paired["unclear"]) else None
    protocol_columns = [ComparisonColumn(f"Balanced accuracy, {name} (mean of {PROTOCOLS[name].repeats} splits)",
                                         values, order=63, note=f"“{name}”: {PROTOCOLS[name].description}.")
                        for name, values in protocol_scores(context).items()]
    return [ReportSection(slot="summary", template=SUMMARY_TEMPLATE, reads=("clustering",),
                          data={"best": best, "tied": tied, "paired": paired}, columns=[
        ComparisonColumn("Balanced accuracy, new patients", column("balanced_accuracy"), order=60,
                         best=highlighted,
                         note="Brackets: 95% confidence intervals from a patient-level bootstrap. “New patients”: "
                              "cross-validation grouped by patient."),
        ComparisonColumn("Patient score, new patients", column("patient_score"), order=60.5,
                         note="“Patient score”: for each held-out patient, the share of their images classified "
                              "correctly, averaged over patients (balanced accuracy counts images)."),
        ComparisonColumn("AUC, new patients", column("roc_auc"), order=61),
        ComparisonColumn("Balanced accuracy, leaky split", column("leaky_balanced_accuracy"), order=62, css="leaky",
                         note="“Leaky split”: images of one patient may sit in both training and test folds, "
                              "which overstates performance."), *protocol_columns])]


def protocol_scores(context: ReportContext) -> dict[str, dict[str, str]]:
    """Per published protocol the run was probed under: backbone -> "mean ± sd" balanced accuracy."""
    metrics = context.store.results.run_results(context.run_id, "probe")
    if metrics.empty or "protocol" not in metrics:
        return {}
    published = metrics[metrics["protocol"].isin(list(PROTOCOLS)) & (metrics["metric"] == "balanced_accuracy")]
    return {name: {r.backbone: f"{r.value:.2f} ± {r.sd:.2f}" for r in rows.itertuples()}
            for name, rows in published.groupby("protocol")}


MODEL_CARD_TEMPLATE = Path(__file__).parent / "templates" / "model_card.html"
CARD_METRICS = (("balanced_accuracy", None, "balanced accuracy"), ("roc_auc", None, "AUC"),
                ("sensitivity", "malignant", "sensitivity (malignant)"), ("specificity", "malignant", "specificity (benign)"))


def _weights_text(backbone: dict) -> str:
    kind = backbone.get("weights_kind")
    if kind == "file":
        return f"local file, sha256 {backbone.get('weights_sha256')}"
    return "ImageNet (keras.applications)" if kind == "imagenet" else f"RANDOM ({backbone.get('weights_id')})"


def model_card_section(context: ReportContext) -> list[ReportSection]:
    """'Model card': intended and out-of-scope use, the data, how the classifier was tested, its
    metrics per backbone with intervals, weights, software and known limitations, on one screen."""
    metrics = context.store.results.run_results(context.run_id, "probe")
    if metrics.empty:
        return []
    if "protocol" in metrics:
        metrics = metrics[metrics["protocol"].fillna(PATIENT_CV) == PATIENT_CV]
    metrics = metrics[(metrics["target"] == "label") & (metrics["split"] == "patient")]
    images = context.store.images.run_images(context.run_id)
    patients_known = images["patient_id"].notna().all()
    per_class = [{"label": label, "images": len(group), "patients": int(group["patient_id"].nunique()) if patients_known else 0}
                 for label, group in images.groupby("label")]
    backbones = []
    for b in context.backbones:
        rows = metrics[metrics["backbone"] == b["backbone"]]
        found = []
        for metric, cls, label in CARD_METRICS:
            interval = metric_estimate(rows, metric=metric, **{"class": cls})
            if interval:
                found.append({"label": label, **interval})
        backbones.append({"backbone": b["backbone"], "metrics": found, "weights": _weights_text(b)})
    settings = context.run.get("settings") or {}
    limitations = ["Embeddings of one network on one data set; results may not carry over to other laboratories.",
                   "Intervals reflect the number of patients, not only of images; with few patients they are wide."]
    if any(b.get("weights_kind") == "random" for b in context.backbones):
        limitations.insert(0, "Some networks ran with RANDOM weights: their numbers only show that the software ran.")
    if settings.get("demo"):
        limitations.insert(0, "The images are synthetic: no number here is evidence about tissue.")
    return [ReportSection("Model card", slot="models", order=5, anchor="model-card", template=MODEL_CARD_TEMPLATE, data={
        "labels": sorted(str(label) for label in images["label"].dropna().unique()), "synthetic": bool(settings.get("demo")),
        "source": context.run.get("source") or "images", "n_images": len(images),
        "n_patients": int(images["patient_id"].nunique()) if patients_known else 0, "per_class": per_class,
        "magnifications": sorted(int(v) for v in images["magnification"].dropna().unique()),
        "n_folds": int(metrics["n_folds"].max()) if not metrics.empty else 0, "backbones": backbones,
        "versions": context.run.get("versions") or {}, "limitations": limitations})]
