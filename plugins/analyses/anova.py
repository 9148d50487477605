"""Many-group comparison of every embedding feature across ``subtype`` and ``magnification``:
one-way ANOVA and Kruskal–Wallis, BH-corrected, eta² / epsilon², Tukey HSD for the top features."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from toolkit import hookimpl
from toolkit.kinds import Analysis, AnalysisContext, Needs
from toolkit.plugins.analyses.stats_common import (FDR_ALPHA, LevelView, bh_qvalues, embeddings_f64,
                                                   group_codes, group_sums, level_views, patient_note,
                                                   valid_groups)
from toolkit.results import Finding, SkipAnalysis, Table

FACTORS = ("subtype", "magnification")
TUKEY_TOP = 3


def effect_sizes(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Eta² per column: between-group over total sum of squares."""
    sums, counts = group_sums(x, codes, n_groups)
    grand = x.mean(axis=0)
    between = (counts[:, None] * (sums / counts[:, None] - grand) ** 2).sum(axis=0)
    return between / ((x - grand) ** 2).sum(axis=0)


def one_way(view: LevelView, factor: str) -> pd.DataFrame | None:
    """Every non-constant feature across the groups of ``factor`` that have at least 2 rows; None
    when fewer than 2 such groups.

    Columns: factor, level, feature, n_groups, n, f, p_val, q_val, eta_sq, h, p_val_kw, q_val_kw,
    epsilon_sq (H / (n - 1), Tomczak & Tomczak 2014).
    """
    present = valid_groups(view.groups)
    if len(present) < 2:
        return None
    keep = view.groups.isin(present).to_numpy()
    codes, _ = group_codes(view.groups[keep])
    x = view.x[keep]
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0)
    x = x[:, varying]
    samples = [x[codes == g] for g in range(len(present))]
    anova, kruskal = stats.f_oneway(*samples, axis=0), stats.kruskal(*samples, axis=0)
    return pd.DataFrame({
        "factor": factor, "level": view.level, "feature": varying, "n_groups": len(present), "n": len(x),
        "f": anova.statistic, "p_val": anova.pvalue, "q_val": bh_qvalues(anova.pvalue),
        "eta_sq": effect_sizes(x, codes, len(present)), "h": kruskal.statistic, "p_val_kw": kruskal.pvalue,
        "q_val_kw": bh_qvalues(kruskal.pvalue), "epsilon_sq": kruskal.statistic / (len(x) - 1)})


def tukey(view: LevelView, factor: str, features: np.ndarray) -> pd.DataFrame:
    """Tukey HSD (statsmodels) for ``features``: columns factor, level, feature, group1, group2,
    meandiff (group2 - group1), p_adj, ci_low, ci_high, reject."""
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    keep = view.groups.isin(valid_groups(view.groups)).to_numpy()
    groups = view.groups[keep].astype(str).to_numpy()
    frames = []
    for feature in features:
        with warnings.catch_warnings():  # groups with zero spread give inf/NaN statistics, kept as such
            warnings.simplefilter("ignore", RuntimeWarning)
            result = pairwise_tukeyhsd(view.x[keep, feature], groups)
        first, second = np.triu_indices(len(result.groupsunique), k=1)
        frames.append(pd.DataFrame({
            "factor": factor, "level": view.level, "feature": int(feature),
            "group1": result.groupsunique[first], "group2": result.groupsunique[second],
            "meandiff": result.meandiffs, "p_adj": result.pvalues, "ci_low": result.confint[:, 0],
            "ci_high": result.confint[:, 1], "reject": result.reject}))
    return pd.concat(frames, ignore_index=True)


def _factor_results(metadata: pd.DataFrame, x: np.ndarray, factor: str,
                    top_k: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame], list[Finding]]:
    tables, posthoc, findings = [], [], []
    for view in level_views(metadata, x, factor):
        table = one_way(view, factor)
        if table is None:
            findings.append(Finding(f"No {view.level}-level test across {factor}: it needs at least 2 groups "
                                    f"with at least 2 {view.level}s each.", "warning"))
            continue
        tables.append(table)
        best = table.nlargest(top_k, "f")["feature"].to_numpy()
        posthoc.append(tukey(view, factor, best))
        n_sig = int((table["q_val"] < FDR_ALPHA).sum())
        findings.append(Finding(
            f"{view.level} level: {n_sig} of {len(table)} features differ across {int(table['n_groups'].iloc[0])} "
            f"{factor} groups at q < {FDR_ALPHA} (one-way ANOVA, Benjamini–Hochberg); "
            f"{int((table['q_val_kw'] < FDR_ALPHA).sum())} by Kruskal–Wallis.",
            detail={"factor": factor, "level": view.level, "n_significant": n_sig, "n_tested": len(table)}))
    return tables, posthoc, findings


def anova(context: AnalysisContext) -> list:
    """Table ``main`` (see :func:`one_way`; every factor and level), table ``tukey`` (see
    :func:`tukey`; the ``settings["anova_tukey_top"]`` features of largest F per factor and level)
    and one finding per factor and level."""
    x = embeddings_f64(context)
    factors = [f for f in FACTORS if f in context.metadata.columns and len(valid_groups(context.metadata[f])) >= 2]
    if not factors:
        raise SkipAnalysis(f"anova needs at least 2 groups of at least 2 images in one of {', '.join(FACTORS)}")
    top_k = int(context.settings.get("anova_tukey_top", TUKEY_TOP))
    tables, posthoc, findings = [], [], [patient_note(context.metadata)]
    for factor in factors:
        factor_tables, factor_posthoc, factor_findings = _factor_results(context.metadata, x, factor, top_k)
        tables += factor_tables
        posthoc += factor_posthoc
        findings += factor_findings
    return [Table("main", pd.concat(tables, ignore_index=True), "One-way ANOVA and Kruskal–Wallis per feature"),
            Table("tukey", pd.concat(posthoc, ignore_index=True), "Tukey HSD for the features of largest F"),
            *findings]


@hookimpl
def register_analyses(register):
    """Register ``anova``."""
    register(Analysis(name="anova", run=anova, needs=Needs(min_samples=4), title="Many-group tests per feature",
                      description="One-way ANOVA and Kruskal–Wallis per feature across subtype and magnification, "
                                  "BH-corrected, with Tukey HSD for the strongest features."))
