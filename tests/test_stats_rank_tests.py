"""The vectorised tests of anova and ttest against scipy and statsmodels called column by column:
shared column ranks, Kruskal–Wallis, one-way F, Tukey–Kramer HSD, Mann–Whitney U and Welch t."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from toolkit.plugins.analyses.anova import tukey
from toolkit.stats import (GroupStats, LevelView, RankCache, column_ranks, compare_two, f_test, kruskal_wallis, mann_whitney,
                           one_way, welch)

SIZES = (30, 12, 45, 9)  # unequal groups


def _tied_data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rounded normal values (many ties), one constant column, one column of only two values."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, dim)), 1)
    x[:, 1] = 2.5
    x[:, 2] = rng.integers(0, 2, n)
    return x


def _codes(sizes=SIZES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


def test_column_ranks_equal_scipy_rankdata_and_tie_counts():
    x = _tied_data(96, 6)
    ranks = column_ranks(x)
    np.testing.assert_array_equal(ranks.ranks, stats.rankdata(x, axis=0).T)
    for j in range(x.shape[1]):
        _, t = np.unique(x[:, j], return_counts=True)
        assert ranks.tie_term[j] == (t.astype(float) ** 3 - t).sum()
    continuous = np.random.default_rng(1).normal(size=(50, 3))
    np.testing.assert_array_equal(column_ranks(continuous).ranks, stats.rankdata(continuous, axis=0).T)
    np.testing.assert_array_equal(column_ranks(continuous).tie_term, 0)


def test_rank_cache_reuses_only_the_same_matrix_and_rows():
    x = _tied_data(40, 3)
    cache, rows = RankCache(), np.arange(40) % 5 != 0
    first = cache.ranks(x, rows)
    assert cache.ranks(x, rows.copy()) is first
    np.testing.assert_array_equal(first.ranks, stats.rankdata(x[rows], axis=0).T)
    assert cache.ranks(x, ~rows) is not first
    assert cache.ranks(x.copy(), rows) is not first


def test_kruskal_wallis_equals_scipy_with_ties():
    x, codes = _tied_data(sum(SIZES), 8), _codes()
    h, p = kruskal_wallis(column_ranks(x), codes, len(SIZES))
    assert np.isnan(h[1]) and np.isnan(p[1])  # constant column
    for j in [0, *range(2, x.shape[1])]:
        expected = stats.kruskal(*[x[codes == g, j] for g in range(len(SIZES))])
        assert h[j] == pytest.approx(expected.statistic, rel=1e-12)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_f_test_equals_scipy_including_constant_groups():
    x, codes = _tied_data(sum(SIZES), 6), _codes()
    x[:, 3] = codes * 0.37 + 1 / 3  # every group constant, groups differ: scipy's F = inf (ours rounds to finite)
    x = np.delete(x, 1, axis=1)  # one_way leaves constant columns out
    f, p, eta = f_test(x, codes, len(SIZES))
    for j in range(x.shape[1]):
        samples = [x[codes == g, j] for g in range(len(SIZES))]
        expected = stats.f_oneway(*samples)
        assert f[j] == pytest.approx(expected.statistic, rel=1e-9)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        grand = x[:, j].mean()
        between = sum(len(s) * (s.mean() - grand) ** 2 for s in samples)
        assert eta[j] == pytest.approx(between / ((x[:, j] - grand) ** 2).sum(), rel=1e-9)
    assert np.isinf(f[2]) and p[2] == 0


def test_one_way_ranks_only_the_rows_it_tests():
    x = _tied_data(97, 5)
    groups = pd.Series(np.r_[np.repeat(["a", "b", "c"], 32), ["d"]])  # d has a single row: left out
    table = one_way(LevelView("image", x, groups), "subtype", RankCache())
    kept = groups.to_numpy() != "d"
    for _, row in table.iterrows():
        j = int(row["feature"])
        expected = stats.kruskal(*[x[groups.to_numpy() == g, j] for g in "abc"])
        assert row["h"] == pytest.approx(expected.statistic, rel=1e-12)
        assert row["p_val_kw"] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        assert row["n"] == kept.sum()


def test_tukey_equals_statsmodels_and_scipy_tukey_hsd():
    codes = _codes()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(len(codes), 5)) + codes[:, None] * np.array([0.0, 0.3, 1.0, 0.1, 0.0])
    x[:, 4] = 7.0  # zero spread: inf/NaN statistics, as statsmodels gives them
    magnification = np.array([40, 100, 200, 400])[codes]  # numbers: 40 first (as text "100" would be)
    table = tukey(LevelView("image", x, pd.Series(magnification)), "magnification", np.arange(5))
    assert table["group1"].tolist()[:3] == ["40", "40", "40"] and table["group2"].tolist()[:3] == ["100", "200", "400"]
    for feature, rows in table.groupby("feature"):
        direct = pairwise_tukeyhsd(x[:, feature], magnification)
        first, second = np.triu_indices(len(direct.groupsunique), k=1)
        assert rows["group1"].tolist() == [str(g) for g in direct.groupsunique[first]]
        assert rows["group2"].tolist() == [str(g) for g in direct.groupsunique[second]]
        np.testing.assert_allclose(rows["meandiff"], direct.meandiffs, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rows[["ci_low", "ci_high"]], direct.confint, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rows["p_adj"], direct.pvalues, rtol=1e-9, atol=1e-14)
        np.testing.assert_array_equal(rows["reject"], direct.reject)
        if feature == 4:
            continue
        exact = stats.tukey_hsd(*[x[magnification == g, feature] for g in sorted(set(magnification))])
        interval = exact.confidence_interval(0.95)
        np.testing.assert_allclose(rows["p_adj"], exact.pvalue[first, second], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(rows["meandiff"], -exact.statistic[first, second], rtol=1e-12)
        np.testing.assert_allclose(rows["ci_low"], -interval.high[first, second], rtol=1e-9)
        np.testing.assert_allclose(rows["ci_high"], -interval.low[first, second], rtol=1e-9)


@pytest.mark.parametrize("decimals", [None, 1])
def test_mann_whitney_equals_scipy_asymptotic(decimals):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 6)) + np.r_[np.zeros(30), np.full(40, 0.4)][:, None]
    x = x if decimals is None else np.round(x, decimals)
    in_b = np.r_[np.zeros(30, bool), np.ones(40, bool)]
    u, p = mann_whitney(column_ranks(x), in_b)
    expected = stats.mannwhitneyu(x[in_b], x[~in_b], axis=0, alternative="two-sided")
    np.testing.assert_allclose(u, expected.statistic, rtol=1e-12)
    np.testing.assert_allclose(p, expected.pvalue, rtol=1e-9)


@pytest.mark.parametrize("n_a", [5, 8, 9, 30])
def test_compare_two_mann_whitney_equals_scipy_for_small_and_large_groups(n_a):
    rng = np.random.default_rng(n_a)
    x = rng.normal(size=(n_a + 25, 4))
    groups = pd.Series(np.r_[np.full(n_a, "benign"), np.full(25, "malignant")]).sample(frac=1.0, random_state=0)
    table = compare_two(LevelView("image", x, groups.reset_index(drop=True)), "label", "benign", "malignant")
    labels = groups.to_numpy()
    expected = stats.mannwhitneyu(x[labels == "malignant"], x[labels == "benign"], axis=0)
    np.testing.assert_allclose(table["u"], expected.statistic, rtol=1e-12)
    np.testing.assert_allclose(table["p_val_mwu"], expected.pvalue, rtol=1e-9)


def test_welch_equals_scipy_ttest_ind():
    rng = np.random.default_rng(4)
    xa, xb = rng.normal(size=(20, 5)), rng.normal(0.5, 2.0, size=(35, 5))
    xa[:, 4], xb[:, 4] = 1.0, 2.0  # both variances zero: t = inf, dof 1 as scipy sets it
    result = welch(GroupStats.of(xa), GroupStats.of(xb))
    expected = stats.ttest_ind(xb, xa, axis=0, equal_var=False)
    np.testing.assert_allclose(result["t"], expected.statistic, rtol=1e-12)
    np.testing.assert_allclose(result["dof"], expected.df, rtol=1e-12)
    np.testing.assert_allclose(result["p_val"], expected.pvalue, rtol=1e-9)
