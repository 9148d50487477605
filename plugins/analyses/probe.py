"""Linear probe: logistic regression on standardised embeddings, cross-validated by patient.

Every metric carries a 95% CI from a patient-level bootstrap: patients are resampled with
replacement and the metric recomputed from per-patient confusion counts, so 1,000 resamples cost
a few matrix products. The same probe with an image-level split (leaky: images of one patient land
in both training and test folds) is stored beside it for comparison.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from toolkit import hookimpl
from toolkit.analysis.evaluation import (C_DEFAULT, N_BOOTSTRAP, SOLVER_TOL, OutOfFold, confusion_counts, cross_validate,
                                         fold_indices, metric_rows, patient_classes, patient_resamples,
                                         percentile_ci, prediction_rows, probe_metrics)
from toolkit.analysis.figures import PALETTE, new_figure, to_svg
from toolkit.analysis.stats import group_codes
from toolkit.plugin.results import Figure, Finding, SkipAnalysis, Table
from toolkit.plugin.sections import ComparisonColumn, ReportContext, ReportSection
from toolkit.plugin.settings import Setting
from toolkit.plugin.types import Analysis, AnalysisContext, Needs
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")

TARGETS = ("label", "subtype")
SPLITS = ("patient", "image")
PATIENT_CV = "patient-cv"


@dataclass(frozen=True)
class Protocol:
    """A published linear-probe protocol: which images, which classes, how many repeated patient splits."""

    name: str
    description: str
    magnification: int
    subtypes: tuple[str, ...]
    repeats: int


PROTOCOLS = {p.name: p for p in (
    Protocol("breakhis-40x-4class", "BreakHis, 40x images only, 4 classes (tubular adenoma, mucinous carcinoma, "
             "fibroadenoma, ductal carcinoma), split by patient, balanced accuracy averaged over repeated splits",
             40, ("tubular_adenoma", "mucinous_carcinoma", "fibroadenoma", "ductal_carcinoma"), 5),
)}


def _target_problem(meta: pd.DataFrame, target: str) -> str | None:
    if target not in meta.columns or meta[target].isna().any():
        return f"{target}: needs a value for every image"
    if meta[target].nunique() < 2:
        return f"{target}: needs at least 2 classes"
    return None


def _fit_all(context: AnalysisContext) -> tuple[list[OutOfFold], list[str]]:
    meta = context.metadata
    patients, _ = group_codes(meta["patient_id"])
    c = float(context.settings.get("c", C_DEFAULT))
    planned, skipped = [], []
    for target in TARGETS:
        problem = _target_problem(meta, target)
        if problem:
            skipped.append(problem)
            continue
        y, classes = group_codes(meta[target])
        for split in SPLITS:  # the leaky image split only as a comparison with the patient split
            try:
                planned.append((target, split, [str(k) for k in classes], y,
                                fold_indices(y, patients, split, context.seed)))
            except SkipAnalysis as exc:
                skipped.append(f"{target}: {exc}")
                break
    probas = cross_validate(context.embeddings, [(y, len(classes), folds) for _, _, classes, y, folds in planned], c)
    fitted = [OutOfFold(target, split, classes, y, proba, len(folds))
              for (target, split, classes, y, folds), proba in zip(planned, probas)]
    return fitted, skipped


def protocol_rows(context: AnalysisContext, protocol: Protocol) -> pd.DataFrame:
    """The probe under a published protocol: its images and classes only, ``repeats`` patient-grouped
    cross-validations with different seeds. Columns as :func:`metric_rows` (``value`` the mean over
    repeats, the interval the patient bootstrap of the first repeat), plus ``sd`` and ``n_repeats``;
    SkipAnalysis when the run lacks the protocol's images."""
    meta = context.metadata
    keep = ((pd.to_numeric(meta["magnification"], errors="coerce") == protocol.magnification)
            & meta["subtype"].isin(protocol.subtypes) & meta["patient_id"].notna()).to_numpy()
    if len(set(meta.loc[keep, "subtype"])) < len(protocol.subtypes):
        missing = sorted(set(protocol.subtypes) - set(meta.loc[keep, "subtype"]))
        raise SkipAnalysis(f"protocol {protocol.name} needs {protocol.magnification}x images of "
                           f"{', '.join(protocol.subtypes)}; none of {', '.join(missing)}")
    y, classes = group_codes(meta.loc[keep, "subtype"].reset_index(drop=True))
    patients, _ = group_codes(meta.loc[keep, "patient_id"].reset_index(drop=True))
    x = np.asarray(context.embeddings)[keep]
    c = float(context.settings.get("c", C_DEFAULT))
    repeats = [fold_indices(y, patients, "patient", context.seed + r) for r in range(protocol.repeats)]
    probas = cross_validate(x, [(y, len(classes), folds) for folds in repeats], c)
    names = [str(k) for k in classes]
    fitted = [OutOfFold("subtype", "patient", names, y, proba, len(folds)) for proba, folds in zip(probas, repeats)]
    scores = [float(probe_metrics(oof, patients, np.ones((1, int(patients.max()) + 1)))["balanced_accuracy"][0])
              for oof in fitted]
    rows = metric_rows(fitted[0], patients, int(context.settings.get("bootstrap", N_BOOTSTRAP)), context.seed)
    rows = rows[rows["metric"] == "balanced_accuracy"].assign(value=float(np.mean(scores)), sd=float(np.std(scores)),
                                                               n_repeats=protocol.repeats)
    return rows.assign(protocol=protocol.name)


def probe(context: AnalysisContext) -> list:
    """Table ``main`` (see :func:`metric_rows`; ``protocol`` says which protocol made each row: tk's
    patient-grouped cross-validation, and with the ``protocol`` setting a published one, see
    :func:`protocol_rows`), table ``predictions`` (see :func:`prediction_rows`), a finding per target
    comparing the patient and the (leaky) image split, ROC and confusion figures."""
    fitted, skipped = _fit_all(context)
    if not fitted:
        raise SkipAnalysis("; ".join(skipped))
    patients, _ = group_codes(context.metadata["patient_id"])
    n_bootstrap = int(context.settings.get("bootstrap", N_BOOTSTRAP))
    tables = [metric_rows(oof, patients, n_bootstrap, context.seed).assign(protocol=PATIENT_CV) for oof in fitted]
    protocol_findings = []
    protocol = PROTOCOLS.get(context.settings.get("protocol", PATIENT_CV))
    if protocol is not None:
        try:
            published = protocol_rows(context, protocol)
            tables.append(published)
            row = published.iloc[0]
            protocol_findings.append(Finding(
                f"Protocol {protocol.name} ({protocol.description}): balanced accuracy {row['value']:.3f} "
                f"(sd {row['sd']:.3f} over {protocol.repeats} repeated patient splits), comparable with published "
                "numbers under the same protocol.", detail={"protocol": protocol.name, "mean": row["value"],
                                                              "sd": row["sd"]}))
        except SkipAnalysis as exc:
            protocol_findings.append(Finding(f"Not probed under {protocol.name}: {exc}", "warning"))
    metrics = pd.concat(tables, ignore_index=True).assign(solver_tol=SOLVER_TOL)
    image_ids = context.metadata["image_id"].to_numpy()
    predictions = pd.concat([prediction_rows(oof, image_ids) for oof in fitted], ignore_index=True)
    results: list = [Table("main", metrics, "Linear probe metrics with patient-bootstrap 95% CIs"),
                     Table("predictions", predictions, "Out-of-fold class probabilities of every image"),
                     *_findings(metrics[metrics["protocol"] == PATIENT_CV]), *protocol_findings,
                     *[Finding(f"Not probed: {s}", "warning") for s in skipped]]
    binary = [oof for oof in fitted if oof.target == "label" and len(oof.classes) == 2]
    if binary:
        results += [_roc_figure(context.backbone, binary), _confusion_figure(context.backbone, binary[0])]
    return results


COMPARED = ("balanced_accuracy", "roc_auc")


def out_of_fold(predictions: pd.DataFrame, image_ids: np.ndarray) -> OutOfFold:
    """The label target's patient-split predictions of one backbone (a ``predictions`` table) as an
    OutOfFold, rows in the order of ``image_ids``."""
    rows = predictions[(predictions["target"] == "label") & (predictions["split"] == "patient")]
    proba = rows.pivot(index="image_id", columns="class", values="probability").reindex(image_ids)
    classes = [str(c) for c in proba.columns]
    truth = rows.drop_duplicates("image_id").set_index("image_id")["y_true"].reindex(image_ids)
    y_true = np.array([classes.index(str(t)) for t in truth])
    return OutOfFold("label", "patient", classes, y_true, proba.to_numpy(dtype=np.float64), 0)


def backbone_comparison(context: AnalysisContext) -> list:
    """Table ``main``: for every pair of backbones and metric (balanced accuracy, AUC; label target,
    patient split), the difference a − b with a 95% interval from the same patient resamples applied
    to both, so the interval reflects the pairing; a finding saying whether one backbone is clearly
    better (its interval against every other excludes 0)."""
    meta = context.metadata
    image_ids = meta["image_id"].to_numpy()
    fitted = {}
    for name in sorted(context.all_embeddings):
        predictions = context.store.result_table(context.run_id, "probe", "predictions", name)
        if not predictions.empty and ((predictions["target"] == "label") & (predictions["split"] == "patient")).any():
            fitted[name] = out_of_fold(predictions, image_ids)
    if len(fitted) < 2:
        raise SkipAnalysis("needs the probe's patient-split label predictions of at least 2 backbones")
    patients, _ = group_codes(meta["patient_id"])
    first = next(iter(fitted.values()))
    resamples = patient_resamples(patient_classes(first.y_true, patients), int(context.settings.get(
        "bootstrap", N_BOOTSTRAP)), context.seed)
    ones = np.ones((1, resamples.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = {name: probe_metrics(oof, patients, resamples) for name, oof in fitted.items()}
        point = {name: probe_metrics(oof, patients, ones) for name, oof in fitted.items()}
    rows = []
    for a, b in combinations(fitted, 2):
        for metric in COMPARED:
            low, high = percentile_ci(boot[a][metric] - boot[b][metric])
            rows.append({"metric": metric, "backbone_a": a, "backbone_b": b, "value_a": float(point[a][metric][0]),
                         "value_b": float(point[b][metric][0]), "diff": float(point[a][metric][0] - point[b][metric][0]),
                         "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows)
    winner = clear_winner(table, "balanced_accuracy")
    verdict = (f"{winner} separates the classes better than every other backbone: the 95% interval of each paired "
               "difference in balanced accuracy excludes 0." if winner else
               "No backbone is clearly better on these data: every backbone's paired difference in balanced accuracy "
               "to the best one has a 95% interval that includes 0.")
    return [Table("main", table, "Paired differences between backbones, same patient resamples for both"),
            Finding(verdict, detail={"best": winner})]


def clear_winner(comparison: pd.DataFrame, metric: str) -> str | None:
    """The backbone whose paired difference in ``metric`` to every other backbone has an interval above
    0, or None when no backbone is clearly better."""
    rows = comparison[comparison["metric"] == metric]
    names = set(rows["backbone_a"]) | set(rows["backbone_b"])
    for name in sorted(names):
        above = [(r.ci_low > 0) if r.backbone_a == name else (r.ci_high < 0)
                 for r in rows.itertuples() if name in (r.backbone_a, r.backbone_b)]
        if above and all(above):
            return name
    return None


def _findings(metrics: pd.DataFrame) -> list[Finding]:
    rows = metrics[metrics["metric"] == "balanced_accuracy"].set_index(["target", "split"])
    findings = []
    for target in rows.index.get_level_values("target").unique():
        parts = [f"{split}-level split {r.value:.3f} (95% CI {r.ci_low:.3f}–{r.ci_high:.3f})"
                 for (t, split), r in rows.loc[[target]].iterrows()]
        findings.append(Finding(f"Linear probe for {target}, balanced accuracy: " + "; ".join(parts)
                                + ". The image-level split is leaky: images of one patient fall on both sides.",
                                detail={"target": target, **{f"{s}_balanced_accuracy": float(r.value)
                                                             for (t, s), r in rows.loc[[target]].iterrows()}}))
    return findings


def _roc_figure(backbone: str | None, fitted: list[OutOfFold]) -> Figure:
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axes = new_figure(4.6, 4.2)
    for colour, oof in zip(PALETTE, fitted):
        fpr, tpr, _ = roc_curve(oof.y_true == 1, oof.proba[:, 1])
        auc = roc_auc_score(oof.y_true == 1, oof.proba[:, 1])
        axes.plot(fpr, tpr, color=colour, label=f"{oof.split} split (AUC {auc:.3f})",
                  linestyle="-" if oof.split == "patient" else "--")
    axes.plot([0, 1], [0, 1], color="#888888", linewidth=0.6)
    axes.set_xlabel(f"false positive rate (1 − specificity, {fitted[0].classes[0]})")
    axes.set_ylabel(f"true positive rate (sensitivity, {fitted[0].classes[1]})")
    axes.legend(frameon=False, loc="lower right")
    axes.set_title(f"{backbone}: linear probe ROC, out-of-fold")
    return Figure("roc", to_svg(figure),
                  alt=f"ROC curves of the linear probe for {fitted[0].classes[1]} vs {fitted[0].classes[0]}, "
                      "patient-level and image-level cross-validation.",
                  caption="Solid: split by patient (honest); dashed: split by image (leaky).")


def _confusion_figure(backbone: str | None, oof: OutOfFold) -> Figure:
    cm = confusion_counts(oof.y_true, oof.y_pred, np.zeros(len(oof.y_true), int), 1, len(oof.classes))[0]
    figure, axes = new_figure(4.0, 3.6)
    axes.imshow(cm, cmap="Blues")
    ticks = range(len(oof.classes))
    axes.set_xticks(ticks, oof.classes)
    axes.set_yticks(ticks, oof.classes)
    for (i, j), count in np.ndenumerate(cm):
        axes.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > cm.max() / 2 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{backbone}: confusion matrix ({oof.split} split)")
    return Figure("confusion", to_svg(figure),
                  alt=f"Confusion matrix of the linear probe, {oof.split}-level split: "
                      + "; ".join(f"true {oof.classes[i]} predicted {oof.classes[j]}: {cm[i, j]}"
                                  for i, j in np.ndindex(cm.shape)),
                  caption="Out-of-fold predictions of every image, split by patient.")


@hookimpl
def register_analyses(register):
    """Register ``probe`` and ``backbone_comparison``."""
    register(Analysis(name="probe", run=probe, needs=Needs(labels=True, patients=True, min_samples=10), order=60,
                      settings=(Setting("c", float, C_DEFAULT, "inverse L2 regularisation of the logistic regression"),
                                Setting("bootstrap", int, N_BOOTSTRAP, "patient-bootstrap resamples for the CIs"),
                                Setting("protocol", str, PATIENT_CV, "also evaluate under a published protocol",
                                        choices=(PATIENT_CV, *PROTOCOLS))),
                      title="Linear probe",
                      description="Logistic regression on standardised embeddings, cross-validated by patient "
                                  "(and, for comparison, leakily by image), with patient-bootstrap CIs."))
    register(Analysis(name="backbone_comparison", run=backbone_comparison, order=61,
                      needs=Needs(labels=True, patients=True, min_samples=10, all_backbones=True, analyses=("probe",)),
                      settings=(Setting("bootstrap", int, N_BOOTSTRAP, "patient-bootstrap resamples for the CIs"),),
                      title="Is one backbone better?",
                      description="Paired differences of the probe's balanced accuracy and AUC between backbones, "
                                  "from the same patient resamples."))


SUMMARY_TEMPLATE = Path(__file__).parent / "templates" / "probe_summary.html"


def _estimate(rows: pd.DataFrame, backbone: str, split: str, metric: str) -> dict[str, float] | None:
    found = rows[(rows["backbone"] == backbone) & (rows["split"] == split) & (rows["metric"] == metric)]
    if found.empty:
        return None
    row = found.iloc[0]
    return {"value": float(row["value"]), "low": float(row["ci_low"]), "high": float(row["ci_high"])}


def backbone_estimates(context: ReportContext) -> list[dict]:
    """Per backbone of the run: patient-split balanced accuracy, AUC, sensitivity and specificity,
    and the leaky image-split balanced accuracy (binary label target), each with its interval."""
    metrics = context.store.run_results(context.run_id, "probe")
    if metrics.empty:
        return []
    if "protocol" in metrics:  # results stored before protocols existed have none: all patient-cv
        metrics = metrics[metrics["protocol"].fillna(PATIENT_CV) == PATIENT_CV]
    metrics = metrics[(metrics["target"] == "label")
                      & (metrics["class"].isna() | metrics["metric"].isin(["sensitivity", "specificity"]))]
    rows = []
    for name in context.backbone_names:
        rows.append({"backbone": name, **{key: _estimate(metrics, name, split, metric) for key, split, metric in (
            ("balanced_accuracy", "patient", "balanced_accuracy"), ("roc_auc", "patient", "roc_auc"),
            ("sensitivity", "patient", "sensitivity"), ("specificity", "patient", "specificity"),
            ("patient_score", "patient", "patient_score"),
            ("leaky_balanced_accuracy", "image", "balanced_accuracy"))}})
    return rows


def paired_verdict(context: ReportContext, best: dict | None) -> dict | None:
    """Whether the best backbone is clearly better than the others (``backbone_comparison``): the
    paired differences in balanced accuracy against it, and ``unclear`` when one interval includes 0.
    None when there is nothing to compare."""
    comparison = context.store.run_results(context.run_id, "backbone_comparison")
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
    clustering = context.store.run_results(context.run_id, "clustering")
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


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The summary's verdict on the backbones and the probe's columns of the comparison table."""
    rows = backbone_estimates(context)
    best, tied = best_backbone(rows, _silhouettes(context))
    paired = paired_verdict(context, best)
    column = lambda key: {r["backbone"]: r[key] for r in rows}  # noqa: E731
    highlighted = best["backbone"] if best and not (paired and paired["unclear"]) else None
    protocol_columns = [ComparisonColumn(f"Balanced accuracy, {name} (mean of {PROTOCOLS[name].repeats} splits)",
                                         values, order=63, note=f"“{name}”: {PROTOCOLS[name].description}.")
                        for name, values in protocol_scores(context).items()]
    return [ReportSection(slot="summary", template=SUMMARY_TEMPLATE,
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
    metrics = context.store.run_results(context.run_id, "probe")
    if metrics.empty or "protocol" not in metrics:
        return {}
    published = metrics[metrics["protocol"].isin(list(PROTOCOLS)) & (metrics["metric"] == "balanced_accuracy")]
    return {name: {r.backbone: f"{r.value:.2f} ± {r.sd:.2f}" for r in rows.itertuples()}
            for name, rows in published.groupby("protocol")}
