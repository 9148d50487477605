"""Two-group tests of every embedding feature at once: Welch's t, Mann–Whitney U, Hedges' g, BH
q-values. ``ttest`` compares the label groups with them, ``clusters`` the Ward clusters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.analysis.stats import ColumnRanks, LevelView, bh_qvalues, column_ranks
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")
special = lazy_import("scipy.special")
stats = lazy_import("scipy.stats")

Z_95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
MWU_EXACT_MAX = 8  # scipy's mannwhitneyu takes its exact distribution when a group is this small (and no ties)


@dataclass(frozen=True)
class GroupStats:
    """Size, mean and sample variance (ddof 1) of every column of one group, computed once for the
    t test and the effect size."""

    n: int
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> GroupStats:
        """The statistics of the rows of ``x``."""
        return cls(len(x), x.mean(axis=0), x.var(axis=0, ddof=1))


def welch(a: GroupStats, b: GroupStats) -> dict[str, np.ndarray]:
    """Welch's t of ``mean_b - mean_a``, its Welch–Satterthwaite dof and two-sided p per column:
    ``scipy.stats.ttest_ind(xb, xa, equal_var=False)`` from the groups' statistics (scipy's own
    formula, dof 1 where both variances vanish): columns t, dof, p_val."""
    vn_a, vn_b = a.var / a.n, b.var / b.n
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = (vn_b + vn_a) ** 2 / (vn_b ** 2 / (b.n - 1) + vn_a ** 2 / (a.n - 1))
        t = (b.mean - a.mean) / np.sqrt(vn_b + vn_a)
    dof = np.where(np.isnan(dof), 1.0, dof)
    return {"t": t, "dof": dof, "p_val": 2 * special.stdtr(dof, -np.abs(t))}


def hedges_g(a: GroupStats, b: GroupStats) -> dict[str, np.ndarray]:
    """Cohen's d and Hedges' g of ``mean_b - mean_a`` per column with a normal-approximation
    95% CI for g (Hedges & Olkin 1985): columns cohen_d, hedges_g, g_ci_low, g_ci_high."""
    n_a, n_b = a.n, b.n
    pooled = np.sqrt(((n_a - 1) * a.var + (n_b - 1) * b.var) / (n_a + n_b - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (b.mean - a.mean) / pooled
    g = d * (1 - 3 / (4 * (n_a + n_b) - 9))
    se = np.sqrt((n_a + n_b) / (n_a * n_b) + g ** 2 / (2 * (n_a + n_b)))
    return {"cohen_d": d, "hedges_g": g, "g_ci_low": g - Z_95 * se, "g_ci_high": g + Z_95 * se}


def mann_whitney(ranks: ColumnRanks, in_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann–Whitney U of the rows in ``in_first`` and its two-sided p-value per column, from ranks over
    both groups: ``scipy.stats.mannwhitneyu``'s asymptotic method (normal approximation with tie and
    continuity corrections), which scipy chooses when both groups have more than 8 rows."""
    n1 = int(in_first.sum())
    n2, n = len(in_first) - n1, len(in_first)
    u1 = ranks.group_sums(in_first.astype(np.intp), 2)[1] - n1 * (n1 + 1) / 2
    u = np.maximum(u1, n1 * n2 - u1)
    s = np.sqrt(n1 * n2 / 12 * ((n + 1) - ranks.tie_term / (n * (n - 1))))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n2 / 2 - 0.5) / s
    return u1, np.clip(special.ndtr(-z) * 2, 0.0, 1.0)


def _mwu(x: np.ndarray, in_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U of the ``in_b`` rows of ``x`` against the others, and p: :func:`mann_whitney` from one ranking
    where scipy would use the normal approximation, scipy itself (exact distribution) for small groups."""
    if min(int(in_b.sum()), int((~in_b).sum())) > MWU_EXACT_MAX:
        return mann_whitney(column_ranks(x), in_b)
    result = stats.mannwhitneyu(x[in_b], x[~in_b], axis=0, alternative="two-sided")
    return result.statistic, result.pvalue


def compare_two(view: LevelView, grouping: str, group_a: str, group_b: str) -> pd.DataFrame:
    """Every non-constant feature of one level, ``group_b`` against ``group_a``.

    Columns: grouping, level, feature (0-based index into the embedding), group_a, group_b, n_a, n_b,
    mean_a, mean_b, t (Welch, positive when group_b is higher), dof, p_val, q_val (BH over the
    features of this level), cohen_d, hedges_g, g_ci_low, g_ci_high, u (Mann–Whitney U of group_b),
    p_val_mwu, q_val_mwu.
    """
    groups = view.groups.to_numpy()
    varying = np.flatnonzero(np.ptp(view.x, axis=0) > 0)
    xa, xb = view.x[groups == group_a][:, varying], view.x[groups == group_b][:, varying]
    a, b = GroupStats.of(xa), GroupStats.of(xb)
    t_test = welch(a, b)
    rows = (groups == group_a) | (groups == group_b)
    both = view.x if rows.all() else view.x[rows]  # at image level a copy costs as much as a test
    u, p_mwu = _mwu(both if len(varying) == both.shape[1] else both[:, varying], groups[rows] == group_b)
    return pd.DataFrame({
        "grouping": grouping, "level": view.level, "feature": varying, "group_a": str(group_a),
        "group_b": str(group_b), "n_a": a.n, "n_b": b.n, "mean_a": a.mean, "mean_b": b.mean, **t_test,
        "q_val": bh_qvalues(t_test["p_val"]), **hedges_g(a, b), "u": u, "p_val_mwu": p_mwu,
        "q_val_mwu": bh_qvalues(p_mwu)})
