"""Many-group comparison of every embedding feature across ``subtype`` and ``magnification``:
one-way ANOVA and Kruskal–Wallis, BH-corrected, eta² / epsilon², Tukey HSD for the top features.

At patient level the design decides the test. A between-patient factor (subtype: each patient has
one) is tested on one mean per patient and group. A within-patient factor (magnification: every
patient is imaged at every magnification) is tested on complete blocks, one mean per patient and
level, with a repeated-measures ANOVA and Friedman's test, so that differences between patients do
not swamp the effect."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from toolkit import Analysis, AnalysisContext, Finding, Needs, SkipAnalysis, Table, hookimpl, lazy_import, setting
from toolkit.stats import (FDR_ALPHA, KRUSKAL_MIN_GROUP, LevelView, RankCache, duplicate_note, embeddings_f64,
                           group_codes, level_views, one_way, patient_blocks, patient_note, repeated_measures,
                           valid_groups, within_patient)

pd = lazy_import("pandas")
stats = lazy_import("scipy.stats")

FACTORS = ("subtype", "magnification")
TUKEY_TOP = 3
TUKEY_ALPHA = 0.05


@lru_cache(maxsize=None)
def studentized_range_critical(n_groups: int, df: int) -> float:
    """The studentized range quantile for Tukey's intervals; cached, as it takes a root search over a
    double integral and factors, levels and backbones mostly share ``(n_groups, df)``."""
    return float(stats.studentized_range.ppf(1 - TUKEY_ALPHA, n_groups, df))


def tukey(view: LevelView, factor: str, features: np.ndarray) -> pd.DataFrame:
    """Tukey–Kramer HSD for ``features``, all at once: columns factor, level, feature, group1, group2,
    meandiff (group2 - group1), p_adj, ci_low, ci_high, reject.

    The numbers of statsmodels' ``pairwise_tukeyhsd`` (its p-values and quantile are scipy's exact
    studentized range too): groups in their natural order (magnifications as numbers: 40 before
    100), named as text, pooled variance over all groups, standard
    error sqrt(MSE / 2 (1/n_i + 1/n_j)), df = n - k, reject where the range exceeds the 95% quantile.
    Groups with zero spread give inf/NaN statistics, kept as such.
    """
    keep = view.groups.isin(valid_groups(view.groups)).to_numpy()
    codes, values_sorted = group_codes(view.groups[keep])
    names = [str(v) for v in values_sorted]
    k, values = len(names), view.x[:, features][keep]
    counts = np.bincount(codes, minlength=k)
    flat = (codes + k * np.arange(len(features))[:, None]).ravel()  # one bincount for every feature's group sums
    means = (np.bincount(flat, weights=values.T.ravel(), minlength=k * len(features)).reshape(-1, k) / counts).T
    df = len(codes) - k
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.var(values - means[codes], axis=0, ddof=k)
        first, second = np.triu_indices(k, k=1)
        meandiff = (means[second] - means[first]).T  # (features, pairs)
        se = np.sqrt(variance[:, None] * ((1.0 / counts[first] + 1.0 / counts[second]) / 2.0))
        q = np.abs(meandiff) / se
    critical = studentized_range_critical(k, df)
    return pd.DataFrame({
        "factor": factor, "level": view.level, "feature": np.repeat(np.asarray(features, dtype=int), len(first)),
        "group1": np.tile(np.asarray(names, dtype=object)[first], len(features)),
        "group2": np.tile(np.asarray(names, dtype=object)[second], len(features)),
        "meandiff": meandiff.ravel(), "p_adj": stats.studentized_range.sf(q, k, df).ravel(),
        "ci_low": (meandiff - critical * se).ravel(), "ci_high": (meandiff + critical * se).ravel(),
        "reject": (q > critical).ravel()})


def _within_patient_results(view: LevelView, factor: str) -> tuple[pd.DataFrame | None, Finding]:
    """The repeated-measures test of a within-patient factor, and the finding that reports it."""
    blocks = patient_blocks(view)
    n_subjects, n_levels = blocks.y.shape[:2]
    dropped = (f"; {blocks.n_dropped} patient{'s' if blocks.n_dropped != 1 else ''} without images at every "
               f"{factor} left out" if blocks.n_dropped else "")
    if n_subjects < 2 or n_levels < 2:
        return None, Finding(f"No patient-level test across {factor}: a repeated-measures test needs at least 2 "
                             f"patients with images at each of at least 2 {factor} levels{dropped}.", "warning")
    table = repeated_measures(blocks, factor)
    n_sig = int((table["q_val"] < FDR_ALPHA).sum())
    return table, Finding(
        f"patient level (within patients): {n_sig} of {len(table)} features differ across {n_levels} {factor} levels "
        f"at q < {FDR_ALPHA} (repeated-measures ANOVA over {n_subjects} patients, Benjamini–Hochberg); "
        f"{int((table['q_val_friedman'] < FDR_ALPHA).sum())} by Friedman's test{dropped}.",
        detail={"factor": factor, "level": "patient", "design": "within", "n_significant": n_sig,
                "n_tested": len(table), "n_subjects": n_subjects, "n_dropped": blocks.n_dropped})


def _factor_results(metadata: pd.DataFrame, x: np.ndarray, factor: str, top_k: int,
                    cache: RankCache) -> tuple[list[pd.DataFrame], list[pd.DataFrame], list[pd.DataFrame], list[Finding]]:
    tables, posthoc, repeated, findings = [], [], [], []
    duplicates = duplicate_note(metadata, factor)
    findings += [duplicates] if duplicates else []
    within = within_patient(metadata, factor)
    for view in level_views(metadata, x, factor):
        if view.level == "patient" and within:
            table, finding = _within_patient_results(view, factor)
            repeated += [table] if table is not None else []
            findings.append(finding)
            continue
        table = one_way(view, factor, cache)
        if table is None:
            findings.append(Finding(f"No {view.level}-level test across {factor}: it needs at least 2 groups "
                                    f"with at least 2 {view.level}s each.", "warning"))
            continue
        tables.append(table)
        best = table[table["q_val"] < FDR_ALPHA].nlargest(top_k, "f")["feature"].to_numpy()
        if best.size:  # post-hoc pairs only for features that passed the FDR correction
            posthoc.append(tukey(view, factor, best))
        n_sig = int((table["q_val"] < FDR_ALPHA).sum())
        kw = (f"{int((table['q_val_kw'] < FDR_ALPHA).sum())} by Kruskal–Wallis." if table["p_val_kw"].notna().any() else
              f"Kruskal–Wallis is not reported: a group has fewer than {KRUSKAL_MIN_GROUP} {view.level}s, too few for "
              "its chi² approximation.")
        findings.append(Finding(
            f"{view.level} level: {n_sig} of {len(table)} features differ across {int(table['n_groups'].iloc[0])} "
            f"{factor} groups at q < {FDR_ALPHA} (one-way ANOVA, Benjamini–Hochberg); {kw}",
            detail={"factor": factor, "level": view.level, "n_significant": n_sig, "n_tested": len(table)}))
    return tables, posthoc, repeated, findings


def chosen_factors(context: AnalysisContext) -> list[str]:
    """The ``factors`` setting's columns; a name that is no metadata column, or a numeric clinical
    column, skips the analysis with the reason."""
    requested = list(context.settings.factors)
    unknown = [f for f in requested if f not in context.metadata.columns]
    if unknown:
        raise SkipAnalysis(f"anova.factors {unknown[0]!r} is not a metadata column; choose among subtype, "
                           "magnification, label and the categorical clinical columns "
                           f"({', '.join(n for n, k in context.clinical_columns.items() if k == 'categorical') or 'none'})")
    numeric = [f for f in requested if context.clinical_columns.get(f) == "numeric"]
    if numeric:
        raise SkipAnalysis(f"anova.factors {numeric[0]!r} is a numeric clinical column; name categorical columns "
                           "(the clinical analysis correlates numeric ones with every feature)")
    return list(dict.fromkeys(requested))


def anova(context: AnalysisContext) -> list:
    """Table ``main`` (see :func:`one_way`; every factor at image level, between-patient factors at
    patient level too), table ``tukey`` (see :func:`tukey`; the ``tukey_top`` setting's features of
    largest F per factor and level of ``main`` among those with q < 0.05), table ``rm`` (see :func:`repeated_measures`;
    within-patient factors at patient level) and one finding per factor and level."""
    x = embeddings_f64(context)
    requested = chosen_factors(context)
    factors = [f for f in requested if len(valid_groups(context.metadata[f])) >= 2]
    if not factors:
        raise SkipAnalysis(f"anova needs at least 2 groups of at least 2 images in one of {', '.join(requested)}")
    top_k = context.settings.tukey_top
    tables, posthoc, repeated, findings, cache = [], [], [], [patient_note(context.metadata)], RankCache()
    for factor in factors:
        factor_tables, factor_posthoc, factor_repeated, factor_findings = _factor_results(
            context.metadata, x, factor, top_k, cache)
        tables += factor_tables
        posthoc += factor_posthoc
        repeated += factor_repeated
        findings += factor_findings
    results: list = [Table("main", pd.concat(tables, ignore_index=True), "One-way ANOVA and Kruskal–Wallis per feature")]
    if posthoc:
        results.append(Table("tukey", pd.concat(posthoc, ignore_index=True),
                             "Tukey HSD for the features of largest F among those with q < 0.05"))
    if repeated:
        results.append(Table("rm", pd.concat(repeated, ignore_index=True),
                             "Repeated-measures ANOVA and Friedman per feature, within patients"))
    return [*results, *findings]


@dataclass(frozen=True)
class AnovaSettings:
    """The settings of ``anova``."""

    tukey_top: int = setting(TUKEY_TOP, "features of largest F per factor and level that get Tukey HSD")
    factors: tuple[str, ...] = setting(FACTORS, "grouping columns: subtype, magnification, label or categorical "
                                                "clinical columns (one varying within patients gets the "
                                                "repeated-measures test)")


@hookimpl
def register_analyses(register):
    """Register ``anova``."""
    register(Analysis(name="anova", run=anova, needs=Needs(min_samples=4), title="Many-group tests per feature",
                      order=40, settings=AnovaSettings,
                      description="One-way ANOVA and Kruskal–Wallis per feature across subtype and magnification, "
                                  "repeated-measures ANOVA and Friedman for magnification within patients, "
                                  "BH-corrected, with Tukey HSD for the strongest features."))
