"""ttest and anova: numbers against scipy / statsmodels called directly, and signal vs shuffled labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from tests.test_stats_common import SIGNAL_FEATURES, synthetic_context
from toolkit.plugins.analyses.anova import AnovaSettings, anova, tukey
from toolkit.plugins.analyses.ttest import TtestSettings, ttest
from toolkit.stats import bh_qvalues, compare_two, f_test, level_views, one_way
from toolkit.plugin.results import Finding, SkipAnalysis, Table


def _tables(results) -> dict:
    return {r.name: r.data for r in results if isinstance(r, Table)}


def test_ttest_matches_scipy_feature_by_feature():
    context = synthetic_context(dim=12)
    x = np.asarray(context.embeddings, dtype=np.float64)
    table = compare_two(level_views(context.metadata, x, "label")[0], "label", "benign", "malignant")
    malignant = (context.metadata["label"] == "malignant").to_numpy()
    for feature in (0, 7):
        a, b = x[~malignant, feature], x[malignant, feature]
        row = table[table["feature"] == feature].iloc[0]
        welch = stats.ttest_ind(b, a, equal_var=False)
        assert row["t"] == pytest.approx(welch.statistic, abs=1e-9)
        assert row["p_val"] == pytest.approx(welch.pvalue, abs=1e-9)
        assert row["p_val_mwu"] == pytest.approx(stats.mannwhitneyu(b, a).pvalue, abs=1e-9)
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        d = (b.mean() - a.mean()) / pooled
        assert row["cohen_d"] == pytest.approx(d, rel=1e-12)
        assert row["hedges_g"] == pytest.approx(d * (1 - 3 / (4 * (len(a) + len(b)) - 9)), rel=1e-12)
        assert row["g_ci_low"] < row["hedges_g"] < row["g_ci_high"]
    np.testing.assert_allclose(table["q_val"], bh_qvalues(table["p_val"].to_numpy()), atol=1e-15)


def test_ttest_finds_the_signal_on_images_and_patients():
    results = ttest(synthetic_context(dim=40, settings=TtestSettings()))
    table = _tables(results)["main"]
    assert set(table["level"]) == {"image", "patient"}
    for level, rows in table.groupby("level"):
        significant = set(rows.loc[rows["q_val"] < 0.05, "feature"])
        assert set(range(SIGNAL_FEATURES)) <= significant, level
    patient_rows = table[table["level"] == "patient"]
    assert (patient_rows["n_a"] + patient_rows["n_b"] == 24).all()  # one row per patient
    assert any("not independent" in r.message for r in results if isinstance(r, Finding))
    assert "14-10" not in " ".join(r.message for r in results if isinstance(r, Finding))


def test_ttest_on_shuffled_labels_finds_nothing():
    context = synthetic_context(dim=40, signal=0.0, settings=TtestSettings())
    shuffled = context.metadata["label"].sample(frac=1.0, random_state=3).to_numpy()
    context.metadata["label"] = shuffled
    table = _tables(ttest(context))["main"]
    image = table[table["level"] == "image"]
    assert (image["q_val"] < 0.05).sum() <= 1
    assert image["q_val"].min() > 0.01


def test_ttest_other_grouping_and_skips():
    context = synthetic_context(dim=8, settings=TtestSettings(grouping="magnification"))
    with pytest.raises(SkipAnalysis, match="two groups"):
        ttest(context)
    context.metadata["magnification"] = np.where(context.metadata["magnification"] < 200, 40, 400)
    assert set(_tables(ttest(context))["main"]["grouping"]) == {"magnification"}
    context.embeddings = np.ones_like(context.embeddings)
    with pytest.raises(SkipAnalysis, match="constant"):
        ttest(context)


def test_anova_matches_scipy_and_statsmodels():
    context = synthetic_context(dim=10)
    x = np.asarray(context.embeddings, dtype=np.float64)
    view = level_views(context.metadata, x, "subtype")[0]
    table = one_way(view, "subtype")
    groups = context.metadata["subtype"].to_numpy()
    samples = [x[groups == g, 3] for g in sorted(set(groups))]
    row = table[table["feature"] == 3].iloc[0]
    assert row["p_val"] == pytest.approx(stats.f_oneway(*samples).pvalue, abs=1e-9)
    assert row["f"] == pytest.approx(stats.f_oneway(*samples).statistic, rel=1e-9)
    assert row["p_val_kw"] == pytest.approx(stats.kruskal(*samples).pvalue, abs=1e-9)
    assert row["epsilon_sq"] == pytest.approx(stats.kruskal(*samples).statistic / (len(x) - 1), rel=1e-12)
    grand = x[:, 3].mean()
    eta = sum(len(s) * (s.mean() - grand) ** 2 for s in samples) / ((x[:, 3] - grand) ** 2).sum()
    assert row["eta_sq"] == pytest.approx(eta, rel=1e-9)
    codes = np.searchsorted(sorted(set(groups)), groups)
    assert f_test(x[:, [3]], codes, 4)[2][0] == pytest.approx(eta, rel=1e-9)
    post = tukey(view, "subtype", np.array([3]))
    direct = pairwise_tukeyhsd(x[:, 3], groups)
    np.testing.assert_allclose(post["p_adj"], direct.pvalues, atol=1e-12)
    np.testing.assert_allclose(post["meandiff"], direct.meandiffs, atol=1e-12)


def test_anova_tables_and_levels():
    results = anova(synthetic_context(dim=12, settings=AnovaSettings()))
    tables = _tables(results)
    main = tables["main"]
    assert set(zip(main["factor"], main["level"])) == {("subtype", "image"), ("subtype", "patient"),
                                                       ("magnification", "image")}  # within patients: table rm
    subtype_image = main[(main["factor"] == "subtype") & (main["level"] == "image")]
    assert (subtype_image.loc[subtype_image["feature"] < SIGNAL_FEATURES, "q_val"] < 0.05).all()
    magnification = main[(main["factor"] == "magnification") & (main["level"] == "image")]
    assert (magnification["q_val"] < 0.05).sum() == 0
    tukey = tables["tukey"]  # only features that passed FDR: subtype's signal, no magnification feature
    assert set(zip(tukey["factor"], tukey["level"])) == {("subtype", "image"), ("subtype", "patient")}
    assert len(tukey) == 2 * 3 * 6  # factor-levels with significant features x top 3 x pairs of 4 groups
    significant = {tuple(r) for r in main.loc[main["q_val"] < 0.05, ["factor", "level", "feature"]].to_numpy()}
    assert {tuple(r) for r in tukey[["factor", "level", "feature"]].to_numpy()} <= significant
    assert (tables["rm"]["q_val"] < 0.05).sum() == 0  # no magnification effect in these data
    assert set(tables["rm"]["n_subjects"]) == {24}


def test_the_comparison_table_headlines_the_patient_level_count():
    """Issue #16, item 5: the report's "Features that differ" counts patient-level tests, not image-level ones."""
    from toolkit.analysis.runner import run_analyses
    from toolkit.plugin.registry import load_registry
    from toolkit.plugin.sections import ReportContext
    from toolkit.plugins.analyses import ttest as ttest_plugin
    from toolkit.store import Store
    from toolkit.testing import synthetic_run

    registry = load_registry()
    store = Store.open(":memory:")
    run = synthetic_run(store, n_images=96, backbones={"alpha": 16})
    run_analyses(store, run.run_id, run.sets, [registry.analyses["ttest"]])
    stored = store.results.run_results(run.run_id, "ttest")
    per_level = {level: int((rows["q_val"] < 0.05).sum()) for level, rows in stored.groupby("level")}
    assert per_level["image"] != per_level["patient"]  # else the test could not tell the levels apart
    context = ReportContext(run.run_id, store, registry, store.runs.run(run.run_id), store.runs.run_backbones(run.run_id))
    [section] = ttest_plugin.report_sections(context)
    [column] = section.columns
    n_patient = int((stored["level"] == "patient").sum())
    assert column.header == "Features that differ (q < 0.05, patient means)"
    assert column.values == {"alpha": f"{per_level['patient']} of {n_patient}"}


def test_top_feature_figure_shows_patient_level_effects():
    """Issue #16, item 7: the effect sizes and intervals plotted are the patient-level ones, and the
    caption says so (image-level intervals ignore that a patient's images are alike)."""
    results = ttest(synthetic_context(dim=12, settings=TtestSettings()))
    figure = next(r for r in results if getattr(r, "name", "") == "top_features")
    top = _tables(results)["top"]
    patient_top = top[top["level"] == "patient"]["feature"].head(10).tolist()
    assert "patient means, one per patient" in figure.alt and "patient means" in figure.caption
    assert all(f"#{feature}" in figure.content for feature in patient_top)
