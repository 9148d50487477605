"""The clusters analysis: feature tests between Ward clusters (circular and split-sample) against scipy,
its behaviour on pure noise and on planted clusters, the contingency statistics, and `tk run`."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.cluster.hierarchy import fcluster, linkage
from statsmodels.stats.multitest import multipletests

from tests.browser import open_page
from tests.conftest import STAND_IN, tk
from tests.test_stats_common import synthetic_context, synthetic_metadata
from toolkit.errors import TkError
from toolkit.plugin.registry import load_registry
from toolkit.plugin.results import SkipAnalysis, Table
from toolkit.plugin.settings import parse_assignments
from toolkit.plugin.types import AnalysisContext
from toolkit.plugins.analyses.clustering import ClusteringSettings, clustering
from toolkit.plugins.analyses.clusters import ClustersSettings, association, cluster_counts, clusters, halves


class StoredResults:
    """The one store read an analysis context makes, ``store.results.result_table``, over tables held in memory."""

    def __init__(self, tables: dict[tuple[str, str], pd.DataFrame]) -> None:
        self.tables = tables

    def result_table(self, run_id: str, analysis: str, table: str = "main", backbone: str = "") -> pd.DataFrame:
        return self.tables.get((analysis, table), pd.DataFrame())


def run_clusters(context: AnalysisContext) -> dict[str, pd.DataFrame]:
    """``clustering`` (with its default settings) then ``clusters`` on one context, as the runner orders
    them; the tables by name."""
    stored = {("clustering", r.name): r.data for r in clustering(replace(context, settings=ClusteringSettings()))
              if isinstance(r, Table)}
    context.store = SimpleNamespace(results=StoredResults(stored))
    return {r.name: r.data for r in clusters(context) if isinstance(r, Table)}


def noise_context(seed: int, n_patients: int = 40, per_patient: int = 5, dim: int = 30) -> AnalysisContext:
    """Pure-noise embeddings: no feature has anything to do with any grouping."""
    metadata = synthetic_metadata(n_patients, per_patient, seed)
    x = np.random.default_rng(seed).normal(size=(len(metadata), dim)).astype(np.float32)
    return AnalysisContext("test", "demo", x, metadata, {"demo": x}, settings=ClustersSettings(k=(2,)), seed=seed)


def test_cluster_welch_and_mann_whitney_equal_scipy_on_the_same_cluster_labels():
    context = synthetic_context(n_patients=12, per_patient=8, dim=6, signal=3.0, settings=ClustersSettings())
    tables = run_clusters(context)
    x = np.asarray(context.embeddings, dtype=np.float64)
    ward = fcluster(linkage(x, "ward"), 2, criterion="maxclust")  # scipy's own Ward on the same images
    rows = tables["main"].query("design == 'circular' and k == 2 and level == 'image'").set_index("feature")
    assert rows["contrast"].unique().tolist() == ["cluster 2 vs cluster 1"]
    assert (rows["n_a"].iloc[0], rows["n_b"].iloc[0]) == ((ward == 1).sum(), (ward == 2).sum())
    welch = stats.ttest_ind(x[ward == 2], x[ward == 1], axis=0, equal_var=False)
    mwu = stats.mannwhitneyu(x[ward == 2], x[ward == 1], axis=0, alternative="two-sided")
    np.testing.assert_allclose(rows["t"].to_numpy(), welch.statistic, rtol=1e-9)
    np.testing.assert_allclose(rows["p_val"].to_numpy(), welch.pvalue, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(rows["u"].to_numpy(), mwu.statistic, rtol=1e-12)
    np.testing.assert_allclose(rows["p_val_mwu"].to_numpy(), mwu.pvalue, rtol=1e-9)
    np.testing.assert_allclose(rows["q_val"].to_numpy(), multipletests(welch.pvalue, method="fdr_bh")[1], rtol=1e-12)

    patient = tables["main"].query("design == 'circular' and k == 2 and level == 'patient'").set_index("feature")
    means = pd.DataFrame(x).groupby([context.metadata["patient_id"].to_numpy(), ward]).mean()
    in_cluster = means.index.get_level_values(1).to_numpy()
    expected = stats.ttest_ind(means[in_cluster == 2].to_numpy(), means[in_cluster == 1].to_numpy(), axis=0,
                               equal_var=False)
    np.testing.assert_allclose(patient["t"].to_numpy(), expected.statistic, rtol=1e-9)
    assert patient["n_a"].iloc[0] + patient["n_b"].iloc[0] == len(means)


def test_more_than_two_clusters_get_anova_and_one_against_the_rest():
    context = synthetic_context(n_patients=12, per_patient=8, dim=6, signal=3.0, settings=ClustersSettings(k=(3,)))
    tables = run_clusters(context)
    x = np.asarray(context.embeddings, dtype=np.float64)
    ward = fcluster(linkage(x, "ward"), 3, criterion="maxclust")
    omnibus = tables["omnibus"].query("design == 'circular' and level == 'image'").set_index("feature")
    anova = stats.f_oneway(*(x[ward == c] for c in (1, 2, 3)), axis=0)
    kruskal = [stats.kruskal(*(x[ward == c, j] for c in (1, 2, 3))) for j in range(x.shape[1])]
    np.testing.assert_allclose(omnibus["f"].to_numpy(), anova.statistic, rtol=1e-9)
    np.testing.assert_allclose(omnibus["h"].to_numpy(), [k.statistic for k in kruskal], rtol=1e-9)
    pairwise = tables["main"].query("design == 'circular' and level == 'image'")
    assert sorted(pairwise["contrast"].unique()) == [f"cluster {c} vs rest" for c in (1, 2, 3)]
    one = pairwise[pairwise["contrast"] == "cluster 3 vs rest"].set_index("feature")
    welch = stats.ttest_ind(x[ward == 3], x[ward != 3], axis=0, equal_var=False)
    np.testing.assert_allclose(one["t"].to_numpy(), welch.statistic, rtol=1e-9)
    top = tables["top"].query("design == 'circular' and level == 'image' and contrast == 'cluster 3 vs rest'")
    assert top["hedges_g"].abs().tolist() == sorted(one["hedges_g"].abs(), reverse=True)[:len(top)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_sample_finds_fewer_features_than_the_circular_test_on_pure_noise(seed):
    """On noise every 'significant' feature is an artefact. Testing on the images that were clustered finds
    many (seeds 0-2: 8 to 14 of 30 at image level); clustering one half of the patients and testing the
    other finds far fewer (at most 3)."""
    summary = run_clusters(noise_context(seed))["summary"].set_index(["design", "level"])["n_significant"]
    for level in ("image", "patient"):
        assert summary["circular", level] >= 6, "the circular test should be optimistic on noise"
        assert summary["split", level] <= summary["circular", level] // 2
    assert summary.sum() > 0


def test_the_split_clusters_one_half_of_the_patients_and_tests_the_other():
    context = noise_context(0)
    metadata = context.metadata
    in_a = halves(metadata, seed=0)
    patients_a, patients_b = set(metadata["patient_id"][in_a]), set(metadata["patient_id"][~in_a])
    assert not patients_a & patients_b and len(patients_a) == len(patients_b) == 20
    for label in metadata["label"].unique():  # stratified: every label on both sides
        assert (metadata["label"][in_a] == label).any() and (metadata["label"][~in_a] == label).any()
    assert (halves(metadata, seed=0) == in_a).all() and not (halves(metadata, seed=1) == in_a).all()
    tables = run_clusters(context)
    split = tables["main"].query("design == 'split' and level == 'image'")
    assert (split["n_a"] + split["n_b"] == (~in_a).sum()).all()
    patient = tables["main"].query("design == 'split' and level == 'patient'")
    assert (patient["n_a"] + patient["n_b"] >= len(patients_b)).all()
    assert (patient["n_a"] + patient["n_b"] <= 2 * len(patients_b)).all()
    off = noise_context(0)
    off.settings = replace(off.settings, split=False)
    assert set(run_clusters(off)["main"]["design"]) == {"circular"}


def planted_context(seed: int = 0) -> AnalysisContext:
    """Two planted groups of patients, recorded in a clinical column ``er_status`` (independent of the
    label): features 0-4 are shifted by 3 SD in the ``positive`` group, the other 25 are noise."""
    metadata = synthetic_metadata(40, 5, seed)
    rng = np.random.default_rng(seed)
    positive = {p: i % 2 == 0 for i, p in enumerate(sorted(metadata["patient_id"].unique()))}
    group = metadata["patient_id"].map(positive).to_numpy()
    metadata = metadata.assign(er_status=np.where(group, "positive", "negative"),
                               age=rng.normal(60, 10, len(metadata)))
    x = rng.normal(size=(len(metadata), 30))
    x[:, :5] += 3.0 * group[:, None]
    x = x.astype(np.float32)
    return AnalysisContext("test", "demo", x, metadata, {"demo": x}, settings=ClustersSettings(k=(2,)), seed=seed,
                           clinical_columns={"er_status": "categorical", "age": "numeric"})


def test_planted_clusters_match_the_groups_and_the_split_finds_the_planted_features():
    tables = run_clusters(planted_context())
    contingency = tables["contingency"].set_index(["design", "level", "reference"])
    assert "age" not in set(tables["contingency"]["reference"])  # numeric clinical columns are not tabulated
    for design in ("circular", "split"):
        for level in ("image", "patient"):
            assert contingency.loc[(design, level, "er_status"), "cramers_v"] > 0.95
        assert contingency.loc[(design, "image", "label"), "cramers_v"] < 0.3
    counts = tables["counts"].query("design == 'circular' and level == 'image' and reference == 'er_status'")
    cells = counts.pivot(index="cluster", columns="value", values="n")
    assert cells.to_numpy().sum() == 200 and (cells.max(axis=1) / cells.sum(axis=1) > 0.95).all()
    split = tables["main"].query("design == 'split' and level == 'patient'")
    significant = set(split.loc[split["q_val"] < 0.05, "feature"])
    assert {0, 1, 2, 3, 4} <= significant
    assert len(significant - {0, 1, 2, 3, 4}) <= 2
    top = tables["top"].query("design == 'split' and level == 'patient'")
    assert set(top["feature"].head(5)) == {0, 1, 2, 3, 4}


def test_contingency_statistics_equal_scipy():
    table = pd.DataFrame([[30, 5, 2], [4, 25, 10]], index=[1, 2], columns=["a", "b", "c"])
    result = association(table)
    chi2, p, dof, expected = stats.chi2_contingency(table.to_numpy())
    assert (result["chi2"], result["p_val"], result["dof"], result["test"]) == (pytest.approx(chi2, rel=1e-12),
                                                                                 pytest.approx(p, rel=1e-12), dof, "chi2")
    assert result["cramers_v"] == pytest.approx(stats.contingency.association(table.to_numpy(), method="cramer"),
                                                rel=1e-12)
    assert result["min_expected"] == pytest.approx(expected.min())
    # Bergsma (2013): phi² - (r-1)(c-1)/(n-1), over min(r~, c~) - 1
    n, phi2 = 76, stats.chi2_contingency(table.to_numpy(), correction=False)[0] / 76
    corrected = np.sqrt((phi2 - 2 / 75) / min(2 - 1 / 75 - 1, 3 - 4 / 75 - 1))
    assert result["cramers_v_bc"] == pytest.approx(corrected, rel=1e-12) and result["cramers_v_bc"] < result["cramers_v"]

    small = pd.DataFrame([[4, 0], [1, 5]])
    result = association(small)
    assert result["test"] == "fisher"
    assert result["p_val"] == pytest.approx(stats.fisher_exact(small.to_numpy()).pvalue, rel=1e-12)
    assert result["chi2"] == pytest.approx(stats.chi2_contingency(small.to_numpy())[0], rel=1e-12)  # Yates


def test_cluster_counts_setting():
    metadata = synthetic_metadata(12, 2)
    analyses = {"clusters": load_registry().analyses["clusters"]}

    def parsed(text: str) -> tuple[int, ...]:
        return parse_assignments([f"clusters.k={text}"], analyses)["clusters"]["k"]

    assert cluster_counts(parsed("auto"), metadata) == [2, 4]
    assert cluster_counts(parsed("3, 2"), metadata) == [2, 3]
    with pytest.raises(SkipAnalysis, match="clusters.k"):
        cluster_counts(parsed("1,2"), metadata)
    for bad in ("two", ""):  # refused by --set, before anything runs
        with pytest.raises(TkError, match="clusters.k"):
            parsed(bad)


def test_tk_run_stores_the_cluster_tables_and_reports_a_clusters_section(tmp_path, breakhis):
    store, out = tmp_path / "tk.duckdb", tmp_path / "reports"
    result = tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--store", store,
                "--out", out, "--plugin", STAND_IN, "--set", "clusters.top_k=3")
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT status FROM analysis_runs WHERE analysis = 'clusters'").fetchall() == [("ok",)]
    designs = con.execute("SELECT DISTINCT design, k FROM results_clusters ORDER BY ALL").fetchall()
    assert designs == [("circular", 2), ("circular", 4), ("split", 2), ("split", 4)]
    assert con.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM results_clusters_top "
                       "GROUP BY design, k, contrast, level)").fetchone() == (3,)
    references = {r[0] for r in con.execute("SELECT DISTINCT reference FROM results_clusters_contingency").fetchall()}
    assert references == {"label", "subtype"}
    total = con.execute("SELECT sum(n) FROM results_clusters_counts WHERE design = 'circular' AND k = 2 "
                        "AND level = 'image' AND reference = 'label'").fetchone()[0]
    assert total == 32
    assert con.execute("SELECT name FROM results_figures WHERE analysis = 'clusters'").fetchall() == [
        ("significant_features",)]
    con.close()
    report = next(out.glob("tk-report-*.html"))
    page = open_page(report, tmp_path / "clusters.png")
    assert page.console == []
    section = page.dom.split('id="clusters"', 1)[1].split("</section>", 1)[0]
    assert "Which features tell the clusters apart?" in section and "Split-sample (honest)" in section
    assert "circular" in section and "optimistic" in section and "Cramér's V, patients" in section
    features = section.split("clusters-features", 1)[1].split("</table>", 1)[0]
    assert features.count("<tr>") == 5  # a header and k = 2, 4 at image and patient level
