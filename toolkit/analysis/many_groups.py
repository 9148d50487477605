"""Many-group tests of every embedding feature at once: one-way ANOVA and Kruskal–Wallis across
groups of rows, repeated-measures ANOVA and Friedman's test across the levels of a within-patient
factor. ``anova`` tests subtype and magnification with them, ``clusters`` the Ward clusters."""

from __future__ import annotations

import numpy as np

from toolkit.analysis.stats import Blocks, ColumnRanks, LevelView, RankCache, bh_qvalues, group_codes, group_sums, valid_groups
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")
special = lazy_import("scipy.special")
stats = lazy_import("scipy.stats")

KRUSKAL_MIN_GROUP = 5
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
    epsilon_sq (H / (n - 1), Tomczak & Tomczak 2014). Kruskal–Wallis is NaN when a group has fewer
    than :data:`KRUSKAL_MIN_GROUP` rows.
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
    if np.bincount(codes).min() >= KRUSKAL_MIN_GROUP:
        h, p_kw = (v[varying] for v in kruskal_wallis((cache or RankCache()).ranks(view.x, keep), codes, len(present)))
    else:  # too few rows per group for the chi² approximation: not reported
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
