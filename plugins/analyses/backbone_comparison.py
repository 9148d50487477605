"""Is one backbone better than another? Paired differences of the probe's metrics between backbones,
from the same patient resamples applied to both."""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np

from toolkit import AnalysisContext, Finding, SkipAnalysis, Table, lazy_import
from toolkit.stats import OutOfFold, group_codes, patient_classes, patient_resamples, percentile_ci, probe_metrics

pd = lazy_import("pandas")

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
        predictions = context.store.results.result_table(context.run_id, "probe", "predictions", name)
        if not predictions.empty and ((predictions["target"] == "label") & (predictions["split"] == "patient")).any():
            fitted[name] = out_of_fold(predictions, image_ids)
    if len(fitted) < 2:
        raise SkipAnalysis("needs the probe's patient-split label predictions of at least 2 backbones")
    patients, _ = group_codes(meta["patient_id"])
    first = next(iter(fitted.values()))
    resamples = patient_resamples(patient_classes(first.y_true, patients), context.settings.bootstrap, context.seed)
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
