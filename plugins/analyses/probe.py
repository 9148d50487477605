"""Linear probe: logistic regression on standardised embeddings, cross-validated by patient.

Every metric carries a 95% CI from a patient-level bootstrap: patients are resampled with
replacement and the metric recomputed from per-patient confusion counts, so 1,000 resamples cost
a few matrix products. The same probe with an image-level split (leaky: images of one patient land
in both training and test folds) is stored beside it for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit import (Analysis, AnalysisContext, Figure, Finding, Needs, PALETTE, ReportContext, ReportSection,
                     SkipAnalysis, Table, hookimpl, lazy_import, new_figure, setting, to_svg)
from toolkit.stats import (C_DEFAULT, N_BOOTSTRAP, OutOfFold, SOLVER_TOL, confusion_counts, cross_validate,
                           fold_indices, group_codes, metric_rows, prediction_rows, probe_metrics)
from toolkit.plugins.analyses.backbone_comparison import backbone_comparison
from toolkit.plugins.analyses.probe_report import model_card_section, summary_section
from toolkit.plugins.analyses.protocols import PATIENT_CV, PROTOCOLS, Protocol

pd = lazy_import("pandas")

TARGETS = ("label", "subtype")
SPLITS = ("patient", "image")
def _target_problem(meta: pd.DataFrame, target: str) -> str | None:
    if target not in meta.columns or meta[target].isna().any():
        return f"{target}: needs a value for every image"
    if meta[target].nunique() < 2:
        return f"{target}: needs at least 2 classes"
    return None


def _fit_all(context: AnalysisContext) -> tuple[list[OutOfFold], list[str]]:
    meta = context.metadata
    patients, _ = group_codes(meta["patient_id"])
    c = context.settings.c
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
    c = context.settings.c
    repeats = [fold_indices(y, patients, "patient", context.seed + r) for r in range(protocol.repeats)]
    probas = cross_validate(x, [(y, len(classes), folds) for folds in repeats], c)
    names = [str(k) for k in classes]
    fitted = [OutOfFold("subtype", "patient", names, y, proba, len(folds)) for proba, folds in zip(probas, repeats)]
    scores = [float(probe_metrics(oof, patients, np.ones((1, int(patients.max()) + 1)))["balanced_accuracy"][0])
              for oof in fitted]
    rows = metric_rows(fitted[0], patients, context.settings.bootstrap, context.seed)
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
    n_bootstrap = context.settings.bootstrap
    tables = [metric_rows(oof, patients, n_bootstrap, context.seed).assign(protocol=PATIENT_CV) for oof in fitted]
    protocol_findings = []
    protocol = PROTOCOLS.get(context.settings.protocol)
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


@dataclass(frozen=True)
class ProbeSettings:
    """The settings of ``probe``."""

    c: float = setting(C_DEFAULT, "inverse L2 regularisation of the logistic regression")
    bootstrap: int = setting(N_BOOTSTRAP, "patient-bootstrap resamples for the CIs")
    protocol: str = setting(PATIENT_CV, "also evaluate under a published protocol", choices=(PATIENT_CV, *PROTOCOLS))


@dataclass(frozen=True)
class ComparisonSettings:
    """The settings of ``backbone_comparison``."""

    bootstrap: int = setting(N_BOOTSTRAP, "patient-bootstrap resamples for the CIs")


@hookimpl
def register_analyses(register):
    """Register ``probe`` and ``backbone_comparison``."""
    register(Analysis(name="probe", run=probe, needs=Needs(labels=True, patients=True, min_samples=10), order=60,
                      settings=ProbeSettings,
                      title="Linear probe",
                      description="Logistic regression on standardised embeddings, cross-validated by patient "
                                  "(and, for comparison, leakily by image), with patient-bootstrap CIs."))
    register(Analysis(name="backbone_comparison", run=backbone_comparison, order=61,
                      needs=Needs(labels=True, patients=True, min_samples=10, all_backbones=True, analyses=("probe",)),
                      settings=ComparisonSettings,
                      title="Is one backbone better?",
                      description="Paired differences of the probe's balanced accuracy and AUC between backbones, "
                                  "from the same patient resamples."))


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The summary's verdict on the backbones, the probe's columns of the comparison table and the
    model card (``probe_report``)."""
    return [*summary_section(context), *model_card_section(context)]
