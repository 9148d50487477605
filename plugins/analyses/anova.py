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

from toolkit import hookimpl
from toolkit.plugin.settings import setting
from toolkit.plugin.types import Analysis, AnalysisContext, Needs
from toolkit.analysis.stats import (FDR_ALPHA, Blocks, ColumnRanks, LevelView, RankCache, bh_qvalues,
                                    duplicate_note, embeddings_f64, group_codes, group_sums, level_views, patient_blocks,
                                    patient_note, valid_groups, within_patient)
from toolkit.plugin.results import Finding, SkipAnalysis, Table
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")
special = lazy_import("scipy.special")
stats = lazy_import("scipy.stats")

FACTORS = ("subtype", "magnification")
TUKEY_TOP = 3
TUKEY_ALPHA = 0.05
KW_MIN_GROUP = 5
"""Smallest group for which Kruskal–Wallis' chi² approximation is used; with fewer patients per group
(BreakHis subtypes at patient level: 2 to 10 patients) it cannot reach significance, and the test
is not reported."""
NEAR_CONSTANT = 1e-9  # within-group over total sum of squares below which f_oneway's own constant-group rules apply


def f_test(x: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-way ANOVA F, p and eta² (between-group over total sum of squares) per column:
    ``scipy.stats.f_oneway``'s sums of squares about the grand mean, from one product of group sums
    instead of per-group copies. Columns whose groups are each (nearly) constant go through scipy
    itself, which gives them F = inf."""
    n = len(x)
    centred = x - x.mean(axis=0)
    normalized_ss = centred.sum(axis=0) ** 2 / n
    total = np.einsum("ij,ij->j", centred, centred) - normalized_ss
    sums, counts = group_sums(centred, codes, n_groups)
    between = (sums ** 2 / counts[:, None]).sum(axis=0) - normalized_ss
    within = total - between
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (between / (n_groups - 1)) / (within / (n - n_groups))
    degenerate = np.flatnonzero(within <= NEAR_CONSTANT * total)
    if degenerate.size:
        f[degenerate] = stats.f_oneway(*[x[codes == g][:, degenerate] for g in range(n_groups)], axis=0).statistic
    return f, special.fdtrc(n_groups - 1, n - n_groups, f), between / total


def kruskal_wallis(ranks: ColumnRanks, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Kruskal–Wallis H (tie-corrected) and its chi² p-value per column, from ranks over the rows of
    every group: ``scipy.stats.kruskal``'s formula on rank sums. Constant columns give NaN."""
    sums = ranks.group_sums(codes, n_groups)
    counts = np.bincount(codes, minlength=n_groups)
    n = int(counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        h = 12.0 / (n * (n + 1)) * sum(s ** 2 / c for s, c in zip(sums, counts)) - 3 * (n + 1)
        h /= 1 - ranks.tie_term / (n ** 3 - n)
    return h, special.chdtrc(n_groups - 1, h)


def one_way(view: LevelView, factor: str, cache: RankCache | None = None) -> pd.DataFrame | None:
    """Every non-constant feature across the groups of ``factor`` that have at least 2 rows; None
    when fewer than 2 such groups. ``cache`` shares the Kruskal–Wallis ranking between calls that
    test the same rows.

    Columns: factor, level, feature, n_groups, n, f, p_val, q_val, eta_sq, h, p_val_kw, q_val_kw,
    epsilon_sq (H / (n - 1), Tomczak & Tomczak 2014).
    """
    present = valid_groups(view.groups)
    if len(present) < 2:
        return None
    keep = view.groups.isin(present).to_numpy()
    codes, _ = group_codes(view.groups[keep])
    x = view.x if keep.all() else view.x[keep]  # at image level a copy costs as much as a test
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0)
    x = x if len(varying) == x.shape[1] else x[:, varying]
    f, p, eta_sq = f_test(x, codes, len(present))
    if np.bincount(codes).min() >= KW_MIN_GROUP:
        h, p_kw = (v[varying] for v in kruskal_wallis((cache or RankCache()).ranks(view.x, keep), codes, len(present)))
    else:  # too few rows per group for the chi² approximation: not reported (a finding says so)
        h = p_kw = np.full(len(varying), np.nan)
    return pd.DataFrame({
        "factor": factor, "level": view.level, "feature": varying, "n_groups": len(present), "n": len(x),
        "f": f, "p_val": p, "q_val": bh_qvalues(p), "eta_sq": eta_sq, "h": h, "p_val_kw": p_kw,
        "q_val_kw": bh_qvalues(p_kw), "epsilon_sq": h / (len(x) - 1)})


def repeated_measures(blocks: Blocks, factor: str) -> pd.DataFrame:
    """Repeated-measures ANOVA and Friedman's test of every non-constant feature across the levels of
    a within-patient factor, on complete blocks (one mean per patient and level).

    Columns: factor, feature, n_subjects, n_levels, f, p_val, q_val, partial_eta_sq, chi2,
    p_val_friedman, q_val_friedman. The ANOVA is statsmodels' ``AnovaRM`` with one value per cell
    (SS_levels / (k - 1) over SS_error / ((k - 1)(s - 1)), partial eta² = SS_levels / (SS_levels +
    SS_error)); Friedman is ``scipy.stats.friedmanchisquare`` (ranks within each patient, tie-corrected).
    """
    y = blocks.y
    s, k, _ = y.shape
    varying = np.flatnonzero(np.ptp(y.reshape(s * k, -1), axis=0) > 0)
    y = y[:, :, varying]
    grand = y.mean(axis=(0, 1))
    ss_levels = s * ((y.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_subjects = k * ((y.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_error = ((y - grand) ** 2).sum(axis=(0, 1)) - ss_levels - ss_subjects
    df_levels, df_error = k - 1, (k - 1) * (s - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ss_levels / df_levels) / (ss_error / df_error)
        partial_eta_sq = ss_levels / (ss_levels + ss_error)
    chi2 = friedman_chi2(y)
    p, p_friedman = special.fdtrc(df_levels, df_error, f), special.chdtrc(df_levels, chi2)
    return pd.DataFrame({
        "factor": factor, "feature": varying, "n_subjects": s, "n_levels": k, "f": f, "p_val": p,
        "q_val": bh_qvalues(p), "partial_eta_sq": partial_eta_sq, "chi2": chi2, "p_val_friedman": p_friedman,
        "q_val_friedman": bh_qvalues(p_friedman)})


def friedman_chi2(y: np.ndarray) -> np.ndarray:
    """Friedman's chi² per feature of blocks ``(subjects, levels, features)``: ranks within each
    subject, corrected for ties as ``scipy.stats.friedmanchisquare`` does."""
    s, k, _ = y.shape
    ranks = stats.rankdata(y, axis=1)
    ordered = np.sort(y, axis=1)
    run = np.cumsum(np.concatenate([np.ones_like(ordered[:, :1], dtype=bool),
                                    ordered[:, 1:] != ordered[:, :-1]], axis=1), axis=1)
    ties = sum(((run == r).sum(axis=1) ** 3 - (run == r).sum(axis=1)).sum(axis=0) for r in range(1, k + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = 12.0 / (k * s * (k + 1)) * (ranks.sum(axis=0) ** 2).sum(axis=0) - 3 * s * (k + 1)
        return chi2 / (1 - ties / (k * (k * k - 1) * s))


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
              f"Kruskal–Wallis is not reported: a group has fewer than {KW_MIN_GROUP} {view.level}s, too few for "
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
