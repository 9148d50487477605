"""Clinical variables against the embeddings: do the images carry what the clinical columns say?

For every numeric clinical column, the Spearman correlation of each embedding feature (and of the
first principal components) with it, at patient level (one mean embedding and one mean value per
patient), Benjamini–Hochberg corrected per column. For every clinical column, a cross-validated
probe from the embeddings to it, split by patient: ridge regression for numeric columns (R² and
Spearman of the out-of-fold predictions), logistic regression for categorical ones (balanced
accuracy with a patient-bootstrap interval, against chance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit import (Analysis, AnalysisContext, Figure, Finding, Needs, PALETTE, ReportContext, ReportSection,
                     SkipAnalysis, Table, hookimpl, lazy_import, new_figure, to_svg)
from toolkit.stats import (C_DEFAULT, FDR_ALPHA, N_BOOTSTRAP, OutOfFold, bh_qvalues, column_ranks, cross_validate,
                           fold_indices, group_sums, has_patients, metric_rows, standardise)

pd = lazy_import("pandas")
special = lazy_import("scipy.special")
stats = lazy_import("scipy.stats")

N_COMPONENTS = 5
MIN_UNITS = 6  # patients (or images) with a value, below which a column is not tested
N_SPLITS = 5
RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-2, 6))
TOP_FEATURES = 10
SHOWN_VARIABLES = 4  # numeric columns drawn in the figures
HOW_TO_ADD = ("Add clinical variables as extra columns of a CSV manifest (path,label,...,er_status,age), or join "
              "a per-patient CSV to any dataset with tk run DATA --clinical clinical.csv (a patient_id column and "
              "one column per variable); see the README.")


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho of every column of ``x`` with ``y`` and its two-sided p-value, as
    ``scipy.stats.spearmanr`` gives them (Pearson on average ranks; t with n - 2 dof). Constant
    columns give NaN."""
    n = len(y)
    rx = column_ranks(x).ranks  # (columns, n)
    ry = stats.rankdata(y)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.clip((rx @ ry) / np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum()), -1.0, 1.0)
        t = rho * np.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
    return rho, 2 * special.stdtr(n - 2, -np.abs(t))


class Units:
    """The rows the correlations use: one mean embedding per patient (per image without patient ids)."""

    def __init__(self, context: AnalysisContext) -> None:
        meta = context.metadata
        self.x_images = np.asarray(context.embeddings, dtype=np.float64)
        self.by_patient = has_patients(meta)
        self.level = "patient" if self.by_patient else "image"
        self.codes = (pd.factorize(meta["patient_id"], sort=True)[0] if self.by_patient
                      else np.arange(len(meta)))
        n_units = int(self.codes.max()) + 1 if len(self.codes) else 0
        sums, counts = group_sums(self.x_images, self.codes, n_units)
        self.x = sums / counts[:, None]
        self.metadata = meta

    def numeric(self, name: str) -> np.ndarray:
        """Each unit's mean value of a numeric column (NaN when it has none)."""
        values = pd.Series(self.metadata[name].to_numpy(dtype=np.float64))
        return values.groupby(self.codes).mean().reindex(range(len(self.x))).to_numpy()

    def varies_within(self, name: str) -> bool:
        """Whether some patient has two values of ``name`` (an image-level, within-patient column)."""
        if not self.by_patient:
            return False
        values = self.metadata[name].astype(object).where(self.metadata[name].notna(), None)
        return bool((values.groupby(self.codes).nunique(dropna=False) > 1).any())


def correlations(units: Units, name: str, components: np.ndarray, ratio: np.ndarray
                 ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Spearman of every varying feature and of the first principal components with numeric column
    ``name``, over the units that have a value; None when fewer than ``MIN_UNITS`` have one."""
    y = units.numeric(name)
    keep = np.isfinite(y)
    if keep.sum() < MIN_UNITS or np.ptp(y[keep]) == 0:
        return None
    x = units.x[keep]
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0)
    rho, p = spearman(x[:, varying], y[keep])
    features = pd.DataFrame({"variable": name, "level": units.level, "feature": varying, "n": int(keep.sum()),
                             "rho": rho, "p_val": p, "q_val": bh_qvalues(p)})
    pc_rho, pc_p = spearman(components[keep], y[keep])
    pcs = pd.DataFrame({"variable": name, "level": units.level, "component": np.arange(1, components.shape[1] + 1),
                        "explained_variance_ratio": ratio, "n": int(keep.sum()), "rho": pc_rho, "p_val": pc_p,
                        "q_val": bh_qvalues(pc_p)})
    return features, pcs


def principal_components(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the first ``N_COMPONENTS`` principal components of the unit means, and their
    shares of the variance."""
    from sklearn.decomposition import PCA

    k = int(min(N_COMPONENTS, x.shape[0] - 1, x.shape[1]))
    model = PCA(n_components=max(k, 1), random_state=seed)
    return model.fit_transform(x), model.explained_variance_ratio_


def patient_folds(groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train and test rows of up to ``N_SPLITS`` folds that keep every group (patient) in one fold."""
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = dict(zip(unique[order], np.arange(len(unique)) % min(N_SPLITS, len(unique))))
    folds = np.array([fold_of[g] for g in groups])
    return [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in np.unique(folds)]


def ridge_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    """Out-of-fold ridge predictions of ``y`` (alpha chosen inside each training fold by RidgeCV's
    leave-one-out), with the cross-validated R² (1 - SS_res / SS_tot: 0 is no better than the mean,
    negative is worse) and the Spearman rho of predictions with truth."""
    from sklearn.linear_model import RidgeCV

    predicted = np.zeros(len(y))
    folds = patient_folds(groups, seed)
    for train, test in folds:
        fit_rows, test_rows = x[train].copy(), x[test].copy()
        standardise(fit_rows, test_rows)
        predicted[test] = RidgeCV(alphas=RIDGE_ALPHAS).fit(fit_rows, y[train]).predict(test_rows)
    r2 = 1.0 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    rho, p = stats.spearmanr(predicted, y)
    return {"n_folds": len(folds), "r2": float(r2), "rho": float(rho), "p_val": float(p)}


def logistic_probe(x: np.ndarray, values: np.ndarray, groups: np.ndarray, name: str, seed: int) -> dict:
    """Out-of-fold logistic regression (folds stratified and grouped by patient) of a categorical
    column: balanced accuracy with its patient-bootstrap 95% interval, and chance (1 / classes)."""
    codes, classes = pd.factorize(pd.Series(values), sort=True)
    patients = pd.factorize(pd.Series(groups), sort=True)[0]
    folds = fold_indices(codes, patients, "patient", seed)
    proba = cross_validate(x, [(codes, len(classes), folds)], C_DEFAULT)[0]
    oof = OutOfFold(name, "patient", [str(c) for c in classes], codes, proba, len(folds))
    rows = metric_rows(oof, patients, N_BOOTSTRAP, seed)
    balanced = rows[rows["metric"] == "balanced_accuracy"].iloc[0]
    return {"n_folds": len(folds), "n_classes": len(classes), "balanced_accuracy": float(balanced["value"]),
            "ci_low": float(balanced["ci_low"]), "ci_high": float(balanced["ci_high"]), "chance": 1.0 / len(classes)}


def probe_row(units: Units, name: str, kind: str, seed: int) -> dict | None:
    """The probe of one column: on patient means when the column is constant within patients, else on
    images with patient-grouped folds; None when too few units have a value (or classes too few patients)."""
    within = units.varies_within(name)
    column = units.metadata[name]
    if within:
        x, groups, values = units.x_images, units.codes, column.to_numpy()
    else:
        first = pd.Series(np.arange(len(column))).groupby(units.codes).first().to_numpy()
        x, groups, values = units.x, np.arange(len(units.x)), column.to_numpy()[first]
    present = pd.notna(values)
    if len(np.unique(groups[present])) < MIN_UNITS:
        return None
    x, groups, values = x[present], groups[present], values[present]
    base = {"variable": name, "kind": kind, "level": "image" if within else units.level, "n": int(present.sum()),
            "n_patients": int(len(np.unique(groups)))}
    if kind == "numeric":
        values = values.astype(np.float64)
        if np.ptp(values) == 0:
            return None
        found = ridge_probe(x, values, groups, seed)
        return {**base, "model": "ridge", "metric": "r2", "value": found["r2"], "chance": 0.0, "ci_low": np.nan,
                "ci_high": np.nan, "rho": found["rho"], "p_val": found["p_val"], "n_folds": found["n_folds"]}
    try:
        found = logistic_probe(x, values, groups, name, seed)
    except SkipAnalysis:  # a class with fewer than 2 patients
        return None
    return {**base, "model": "logistic", "metric": "balanced_accuracy", "value": found["balanced_accuracy"],
            "chance": found["chance"], "ci_low": found["ci_low"], "ci_high": found["ci_high"], "rho": np.nan,
            "p_val": np.nan, "n_folds": found["n_folds"]}


def clinical(context: AnalysisContext) -> list:
    """Tables ``main`` (variable, level, feature, n, rho, p_val, q_val: Spearman of every feature with
    every numeric column, BH per column), ``pcs`` (variable, level, component, explained_variance_ratio,
    n, rho, p_val, q_val) and ``probe`` (variable, kind, level, n, n_patients, model, metric, value,
    chance, ci_low, ci_high, rho, p_val, n_folds), findings, a bar chart of the strongest features and a
    scatter of the most correlated component against each numeric column."""
    kinds = context.clinical_columns
    if not kinds:
        raise SkipAnalysis("the run has no clinical variables. " + HOW_TO_ADD)
    units = Units(context)
    if len(units.x) < MIN_UNITS:
        raise SkipAnalysis(f"needs at least {MIN_UNITS} {units.level}s, the run has {len(units.x)}")
    components, ratio = principal_components(units.x, context.seed)
    features, pcs, findings = [], [], []
    if not units.by_patient:
        findings.append(Finding("No patient ids: correlations and probes treat every image as a patient, which "
                                "overstates the evidence when a patient has several images.", "warning"))
    for name in [n for n, k in kinds.items() if k == "numeric"]:
        found = correlations(units, name, components, ratio)
        if found is None:
            findings.append(Finding(f"{name}: not correlated, fewer than {MIN_UNITS} {units.level}s have a value "
                                    "(or all values are equal).", "warning"))
            continue
        features.append(found[0])
        pcs.append(found[1])
        findings.append(_correlation_finding(name, *found))
    probes = [row for name, kind in kinds.items() if (row := probe_row(units, name, kind, context.seed)) is not None]
    findings += [_probe_finding(row) for row in probes]
    results: list = []
    if features:
        main = pd.concat(features, ignore_index=True)
        results += [Table("main", main, "Spearman correlation of every feature with each numeric clinical column"),
                    Table("pcs", pd.concat(pcs, ignore_index=True),
                          "Spearman correlation of the first principal components with each numeric clinical column"),
                    _top_figure(context.backbone, main), _pc_scatter(context.backbone, units, components, ratio,
                                                                      pd.concat(pcs, ignore_index=True))]
    if probes:
        results.append(Table("probe", pd.DataFrame(probes), "Cross-validated probe from the embeddings to each "
                                                            "clinical column, split by patient"))
    return [*results, *findings]


def _correlation_finding(name: str, features: pd.DataFrame, pcs: pd.DataFrame) -> Finding:
    n_sig = int((features["q_val"] < FDR_ALPHA).sum())
    best = features.loc[features["rho"].abs().idxmax()]
    best_pc = pcs.loc[pcs["rho"].abs().fillna(-1).idxmax()]
    return Finding(
        f"{name}: {n_sig} of {len(features)} features correlate with it at q < {FDR_ALPHA} (Spearman over "
        f"{int(best['n'])} {best['level']}s, Benjamini–Hochberg); strongest feature #{int(best['feature'])} "
        f"(rho {best['rho']:+.2f}), strongest component PC{int(best_pc['component'])} (rho {best_pc['rho']:+.2f}).",
        detail={"variable": name, "n_significant": n_sig, "n_tested": len(features), "n": int(best["n"]),
                "best_feature": int(best["feature"]), "best_rho": float(best["rho"])})


def _probe_finding(row: dict) -> Finding:
    where = (f"{row['n']} images of {row['n_patients']} patients, folds split by patient" if row["level"] == "image"
             else f"{row['n']} {row['level']}s")
    if row["model"] == "ridge":
        verdict = ("the embeddings predict it" if row["value"] > 0.1 and row["p_val"] < FDR_ALPHA
                   else "the embeddings do not predict it better than its mean")
        text = (f"{row['variable']}: {verdict} (ridge, cross-validated R² {row['value']:.2f}, Spearman of predictions "
                f"{row['rho']:+.2f}; {where}).")
    else:
        above = row["ci_low"] > row["chance"]
        verdict = "the embeddings predict it" if above else "no evidence that the embeddings predict it"
        text = (f"{row['variable']}: {verdict} (logistic, balanced accuracy {row['value']:.2f}, 95% CI "
                f"{row['ci_low']:.2f}–{row['ci_high']:.2f}, chance {row['chance']:.2f}; {where}).")
    return Finding(text, detail={"variable": row["variable"], "model": row["model"], "value": row["value"]})


def _panels(n: int, height: float) -> tuple[Any, np.ndarray]:
    """A figure of ``n`` panels side by side, one per clinical column."""
    figure, _ = new_figure(3.0 * n, height)
    figure.clf()
    return figure, figure.subplots(1, n, squeeze=False)[0]


def _top_figure(backbone: str | None, main: pd.DataFrame) -> Figure:
    """The features of largest |rho| for each numeric column (first ``SHOWN_VARIABLES``)."""
    variables = list(dict.fromkeys(main["variable"]))[:SHOWN_VARIABLES]
    figure, grid = _panels(len(variables), 3.2)
    for axis, name in zip(grid, variables):
        rows = main[main["variable"] == name]
        top = rows.loc[rows["rho"].abs().sort_values(ascending=False).index[:TOP_FEATURES]]
        significant = (top["q_val"] < FDR_ALPHA).to_numpy()
        positions = np.arange(len(top))
        axis.barh(positions, top["rho"], color=[PALETTE[1] if s else "#BBBBBB" for s in significant],
                  edgecolor="black", linewidth=0.4)
        axis.set_yticks(positions, [f"#{f}{'*' if s else ''}" for f, s in zip(top["feature"], significant)], fontsize=7)
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_xlim(-1, 1)
        axis.set_xlabel("Spearman rho", fontsize=8)
        axis.set_title(name, fontsize=9)
    figure.suptitle(f"{backbone}: features most correlated with each numeric clinical column (* = q < {FDR_ALPHA})",
                    fontsize=9)
    figure.set_layout_engine("constrained")
    return Figure("clinical_top_features", to_svg(figure),
                  alt=f"Bar charts of the {TOP_FEATURES} embedding features with the largest Spearman correlation "
                      f"with {', '.join(variables)}, one mean per patient.",
                  caption="Spearman correlation of each feature with the clinical column, one mean embedding and one "
                          "value per patient. Orange bars (and *) are significant after Benjamini–Hochberg correction.")


def _pc_scatter(backbone: str | None, units: Units, components: np.ndarray, ratio: np.ndarray,
                pcs: pd.DataFrame) -> Figure:
    """Each numeric column against its most correlated principal component, one point per unit."""
    variables = list(dict.fromkeys(pcs["variable"]))[:SHOWN_VARIABLES]
    figure, grid = _panels(len(variables), 3.0)
    for axis, name in zip(grid, variables):
        rows = pcs[pcs["variable"] == name]
        best = rows.loc[rows["rho"].abs().fillna(-1).idxmax()]
        k = int(best["component"])
        y = units.numeric(name)
        axis.scatter(components[:, k - 1], y, s=16, alpha=0.8, c=PALETTE[0], linewidths=0)
        axis.set_xlabel(f"PC{k} ({ratio[k - 1]:.0%} of variance)", fontsize=8)
        axis.set_ylabel(name, fontsize=8)
        axis.set_title(f"rho {best['rho']:+.2f}, q {best['q_val']:.2g}", fontsize=8)
    figure.suptitle(f"{backbone}: each numeric clinical column against its most correlated principal component",
                    fontsize=9)
    figure.set_layout_engine("constrained")
    return Figure("clinical_pc_scatter", to_svg(figure),
                  alt=f"Scatter plots, one point per {units.level}, of {', '.join(variables)} against the principal "
                      "component of the embeddings most correlated with each.",
                  caption=f"One point per {units.level} (its mean embedding's component score and its value); no "
                          "point is named.")


@hookimpl
def register_analyses(register):
    """Register ``clinical``."""
    register(Analysis(name="clinical", run=clinical, needs=Needs(min_samples=MIN_UNITS), order=60,
                      title="Clinical variables",
                      description="Spearman correlation of every feature and the first principal components with "
                                  "each numeric clinical column at patient level (BH-corrected), and a patient-split "
                                  "probe from the embeddings to every clinical column.",
                      libraries=("scikit-learn", "scipy", "statsmodels")))


CLINICAL_TEMPLATE = Path(__file__).parent / "templates" / "clinical.html"


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The "Clinical variables" section: the run's clinical columns, the ones dropped, and per
    backbone what the correlations and probes found, in plain words; without clinical columns, how
    to add them."""
    columns = context.store.clinical.run_clinical_columns(context.run_id)
    said = [w for w in context.run.get("warnings") or [] if "clinical column" in w or "of the clinical CSV" in w]
    correlations_found = context.store.results.run_results(context.run_id, "clinical")
    probes = context.store.results.run_results(context.run_id, "clinical", "probe")
    summaries = []
    for name in context.backbone_names:
        strongest = []
        if not correlations_found.empty:
            rows = correlations_found[correlations_found["backbone"] == name]
            for variable, group in rows.groupby("variable", sort=False):
                best = group.loc[group["rho"].abs().idxmax()]
                strongest.append({"variable": variable, "n_significant": int((group["q_val"] < FDR_ALPHA).sum()),
                                  "n_tested": len(group), "feature": int(best["feature"]), "rho": float(best["rho"]),
                                  "q": float(best["q_val"]), "n": int(best["n"]), "level": best["level"]})
        probe_rows = probes[probes["backbone"] == name].to_dict("records") if not probes.empty else []
        if strongest or probe_rows:
            summaries.append({"backbone": name, "correlations": strongest, "probes": probe_rows})
    return [ReportSection("Clinical variables", slot="appendix", order=50, anchor="clinical", template=CLINICAL_TEMPLATE,
                          data={"columns": columns.to_dict("records"), "warnings": said, "summaries": summaries,
                                "how_to_add": HOW_TO_ADD, "alpha": FDR_ALPHA})]
