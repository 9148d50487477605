"""Patient-grouped evaluation of classifiers on embeddings, shared by the probe, ``tk train`` and
third-party analyses: cross-validation folds split by patient, out-of-fold predictions, confusion
metrics, a weighted ROC AUC and the patient-level bootstrap.

Every metric carries a 95% CI from a patient-level bootstrap: patients are resampled with
replacement and the metric recomputed from per-patient confusion counts, so 1,000 resamples cost
a few matrix products.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from toolkit.plugin.results import SkipAnalysis
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")

N_SPLITS = 5
N_BOOTSTRAP = 1000
C_DEFAULT = 0.1
SOLVER_TOL = 1e-6
"""lbfgs tolerance of every probe fit: scikit-learn's default (1e-4) left out-of-fold probabilities up
to 0.05 from the converged fit (80 patients, 1,280 features); 1e-6 leaves about 1e-7, in the same time."""
SOLVER_MAX_ITER = 1000
STANDARDISE_ROWS = 1024  # rows per block when summing squared deviations: 1024 x 2048 float64 is 16 MB


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predictions of one target and split."""

    target: str
    split: str
    classes: list[str]
    y_true: np.ndarray  # class codes
    proba: np.ndarray  # (n_images, n_classes)
    n_splits: int

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


def n_folds(y: np.ndarray, patients: np.ndarray, split: str) -> int:
    """Folds a stratified split can make: at most 5, at most the smallest class's patients (or images)."""
    units = pd.DataFrame({"y": y, "unit": patients if split == "patient" else np.arange(len(y))})
    return int(min(N_SPLITS, units.drop_duplicates().groupby("y").size().min()))


def fold_indices(y: np.ndarray, patients: np.ndarray, split: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train and test rows of every fold: ``StratifiedGroupKFold`` by patient or ``StratifiedKFold`` by
    image, with :func:`n_folds` folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    folds = n_folds(y, patients, split)
    if folds < 2:
        unit = "patients" if split == "patient" else "images"
        raise SkipAnalysis(f"a {split}-level split needs at least 2 {unit} in every class")
    splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if split == "patient"
                else StratifiedKFold(folds, shuffle=True, random_state=seed))
    return list(splitter.split(np.zeros(len(y)), y, patients if split == "patient" else None))


def standardise(train: np.ndarray, test: np.ndarray) -> None:
    """Standardise both, in place, with the mean and standard deviation of ``train``, as scikit-learn's
    ``StandardScaler`` does (float64 moments; a constant feature keeps a scale of 1), in a fraction of
    its time and memory: the squared deviations are summed a block of rows at a time."""
    mean = train.mean(axis=0, dtype=np.float64)
    blocks = np.array_split(train, max(1, len(train) // STANDARDISE_ROWS))
    variance = sum(np.square(block - mean).sum(axis=0) for block in blocks) / len(train)
    eps = np.finfo(np.float64).eps
    constant = variance <= len(train) * eps * variance + (len(train) * mean * eps) ** 2  # rounding only
    scale = np.where(constant, 1.0, np.sqrt(variance))
    for part in (train, test):
        np.subtract(part, mean, out=part, casting="same_kind")
        np.divide(part, scale, out=part, casting="same_kind")


def fold_proba(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int,
               c: float) -> np.ndarray:
    """Class probabilities ``(len(test), n_classes)`` of a logistic regression fitted on the
    standardised ``train`` rows."""
    from sklearn.linear_model import LogisticRegression

    fit_rows, test_rows = x[train], x[test]
    standardise(fit_rows, test_rows)
    space = RowSpace().fit(fit_rows)
    model = LogisticRegression(C=c, tol=SOLVER_TOL, max_iter=SOLVER_MAX_ITER).fit(space.transform(fit_rows), y[train])
    proba = np.zeros((len(test), n_classes))
    proba[:, model.classes_] = model.predict_proba(space.transform(test_rows))
    return proba


def cross_validate(x: np.ndarray, problems: list[tuple[np.ndarray, int, list[tuple[np.ndarray, np.ndarray]]]],
                   c: float) -> list[np.ndarray]:
    """Out-of-fold class probabilities ``(n, n_classes)`` for each problem ``(y, n_classes, folds)``.

    The folds are independent, so they run side by side, one per core, each with one BLAS thread: the
    fits' matrix products (thousands of images by at most a few classes) are too narrow to share well
    between threads, and on a busy two-core machine two BLAS threads per fit ran five times slower
    than one."""
    from sklearn.utils import check_array
    from threadpoolctl import threadpool_limits

    x = check_array(x, dtype=[np.float64, np.float32])  # float32 stays float32, as in StandardScaler
    jobs = [(k, train, test) for k, (_, _, folds) in enumerate(problems) for train, test in folds]
    jobs.sort(key=lambda job: -problems[job[0]][1])  # multinomial fits first: no core idles at the end

    def fit(job: tuple[int, np.ndarray, np.ndarray]) -> np.ndarray:
        k, train, test = job
        return fold_proba(x, problems[k][0], train, test, problems[k][1], c)

    with threadpool_limits(1), ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        fitted = list(pool.map(fit, jobs))
    probas = [np.zeros((len(y), n_classes)) for y, n_classes, _ in problems]
    for (k, _, test), proba in zip(jobs, fitted):
        probas[k][test] = proba
    return probas


class RowSpace:
    """Coordinates in the span of the (standardised) training rows.

    An L2-regularised logistic regression's weights lie in that span (representer theorem), so
    fitting on these coordinates gives the same model with at most n_train instead of dim weights
    per class: exact, and far faster when there are fewer images than features.
    """

    def fit(self, x: np.ndarray) -> RowSpace:
        if len(x) >= x.shape[1]:
            self.basis_ = None  # the rows already span every direction the weights can use
            return self
        _, singular, vt = np.linalg.svd(x, full_matrices=False)
        rank = int((singular > singular[0] * max(x.shape) * np.finfo(float).eps).sum()) if singular.size else 0
        self.basis_ = vt[:max(rank, 1)].T
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x if self.basis_ is None else x @ self.basis_


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, patients: np.ndarray, n_patients: int,
                     n_classes: int) -> np.ndarray:
    """Per-patient confusion matrices ``(n_patients, n_classes, n_classes)``, rows = true class."""
    flat = (patients * n_classes + y_true) * n_classes + y_pred
    return np.bincount(flat, minlength=n_patients * n_classes ** 2).reshape(n_patients, n_classes, n_classes)


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy and balanced_accuracy ``(...)``, sensitivity and specificity per class ``(..., C)``
    of confusion matrices ``(..., C, C)`` (one-vs-rest for specificity)."""
    total = cm.sum(axis=(-2, -1))
    hits = np.diagonal(cm, axis1=-2, axis2=-1)
    actual, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = hits / actual
        specificity = (total[..., None] - actual - predicted + hits) / (total[..., None] - actual)
        return {"accuracy": hits.sum(axis=-1) / total, "balanced_accuracy": np.nanmean(sensitivity, axis=-1),
                "sensitivity": sensitivity, "specificity": specificity}


def weighted_auc(score: np.ndarray, positive: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for each row of group ``weights`` ``(B, n_groups)``: image i counts
    ``weights[:, groups[i]]`` times; ties count one half.

    The AUC is a quadratic form in the group weights over the pairs matrix ``(n_groups, n_groups)``
    (positives of one group ranked above negatives of another), so a resample costs ``n_groups ** 2``
    whatever the number of images."""
    levels, level = np.unique(score, return_inverse=True)
    shape = (weights.shape[1], len(levels))
    cell = groups * len(levels) + level.ravel()
    pos = np.bincount(cell, weights=positive, minlength=shape[0] * shape[1]).reshape(shape)
    neg = np.bincount(cell, weights=~positive, minlength=shape[0] * shape[1]).reshape(shape)
    pairs = pos @ (np.cumsum(neg, axis=1) - 0.5 * neg).T  # negatives below each level, ties one half
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((weights @ pairs) * weights).sum(axis=1) / ((weights @ pos.sum(axis=1)) * (weights @ neg.sum(axis=1)))


def probe_metrics(oof: OutOfFold, patients: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of patient ``weights`` ``(B, n_patients)``: scalars ``(B,)``;
    sensitivity and specificity ``(B, C)``. A row of ones gives the plain estimate."""
    n_classes = len(oof.classes)
    counts = confusion_counts(oof.y_true, oof.y_pred, patients, weights.shape[1], n_classes)
    cm = (weights @ counts.reshape(len(counts), -1)).reshape(len(weights), n_classes, n_classes)
    metrics = confusion_metrics(cm)
    per_patient = np.trace(counts, axis1=1, axis2=2) / counts.sum(axis=(1, 2))
    metrics["patient_score"] = weights @ per_patient / weights.sum(axis=1)
    classes = [1] if n_classes == 2 else range(n_classes)  # binary: the AUC of the second class
    metrics["roc_auc"] = np.nanmean([weighted_auc(oof.proba[:, c], oof.y_true == c, patients, weights)
                                     for c in classes], axis=0)
    return metrics


def patient_resamples(strata: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Bootstrap weights ``(n_bootstrap, n_patients)``: how often each patient is drawn per resample,
    stratified: patients are drawn within each stratum (``strata[p]``, the patient's class), as many
    as it has, so every resample keeps every class (a resample without one would average balanced
    accuracy and AUC over the classes it happens to hold). The same seed gives the same resamples,
    so metrics of two models of the same patients can be paired."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_bootstrap, len(strata)))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_bootstrap)
    return weights


def patient_classes(y_true: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each patient's class (the most frequent among its images), the strata of :func:`patient_resamples`."""
    counts = np.zeros((int(patients.max()) + 1, int(y_true.max()) + 1))
    np.add.at(counts, (patients, y_true), 1)
    return counts.argmax(axis=1)


def metric_rows(oof: OutOfFold, patients: np.ndarray, n_bootstrap: int, seed: int,
                every_class: bool = False) -> pd.DataFrame:
    """Columns target, split, metric, class, value, ci_low, ci_high, ci_method, n_folds. Binary
    targets list sensitivity and specificity of the second class only (label: sensitivity = recall of
    malignant, specificity = recall of benign) unless ``every_class``; other targets list both for
    every class, one-vs-rest.

    ``ci_method`` is ``bootstrap`` (percentile interval of the stratified patient bootstrap) or, where
    a metric is 0 or 1 in every resample (a percentile interval cannot leave a perfect result),
    ``clopper-pearson``: the exact 95% bound on the number of patients the metric rests on (those of
    the class for sensitivity and specificity, all for the rest)."""
    n_patients = int(patients.max()) + 1
    strata = patient_classes(oof.y_true, patients)
    resamples = patient_resamples(strata, n_bootstrap, seed)
    with warnings.catch_warnings():  # a class no patient predicts still gives NaN (e.g. specificity); ignored
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = probe_metrics(oof, patients, resamples)
        point = probe_metrics(oof, patients, np.ones((1, n_patients)))
        listed = range(1 if len(oof.classes) == 2 and not every_class else 0, len(oof.classes))
        rows = []
        for metric, value in point.items():
            if value.ndim == 1:
                rows.append(_row(metric, value, boot[metric], None, n_patients))
            else:
                rows += [_row(metric, value[:, c], boot[metric][:, c], oof.classes[c],
                              int((strata == c).sum()) if metric == "sensitivity" else int((strata != c).sum()))
                         for c in listed]
    return pd.DataFrame(rows).assign(target=oof.target, split=oof.split, n_folds=oof.n_splits)[
        ["target", "split", "metric", "class", "value", "ci_low", "ci_high", "ci_method", "n_folds"]]


def percentile_ci(boot: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values, ignoring NaN (a metric undefined in a resample)."""
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return float(low), float(high)


def exact_bound(value: float, n: int) -> tuple[float, float]:
    """The Clopper–Pearson 95% interval of a proportion observed as 0 or 1 in ``n`` patients."""
    edge = 0.025 ** (1 / n) if n else 0.0
    return (edge, 1.0) if value == 1.0 else (0.0, 1.0 - edge)


def _row(metric: str, point: np.ndarray, boot: np.ndarray, name: str | None, n_units: int) -> dict:
    value = float(point[0])
    low, high = percentile_ci(boot)
    method = "bootstrap"
    if low == high == value and value in (0.0, 1.0):  # a percentile interval cannot leave a perfect result
        (low, high), method = exact_bound(value, n_units), "clopper-pearson"
    return {"metric": metric, "class": name, "value": value, "ci_low": float(low), "ci_high": float(high),
            "ci_method": method}


def prediction_rows(oof: OutOfFold, image_ids: np.ndarray) -> pd.DataFrame:
    """Long table, one row per image and class: image_id, target, split, y_true, y_pred, class,
    probability (the binary ROC curve reads class = 'malignant')."""
    n, n_classes = oof.proba.shape
    names = np.asarray(oof.classes, dtype=object)
    return pd.DataFrame({
        "image_id": np.repeat(image_ids, n_classes), "target": oof.target, "split": oof.split,
        "y_true": np.repeat(names[oof.y_true], n_classes), "y_pred": np.repeat(names[oof.y_pred], n_classes),
        "class": np.tile(names, n), "probability": oof.proba.ravel()})
