"""correlation, cka, clustering and integrity against direct computations on fixed data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from sklearn.metrics import adjusted_rand_score, silhouette_score

from tests.test_stats_common import synthetic_context
from toolkit.plugins.analyses.clustering import (ClusteringSettings, clustering, cluster_distance_sums, condensed_euclidean, purity,
                                                 silhouette, silhouettes, upper_gram, ward_linkage)
from toolkit.plugins.analyses.correlation import cka, cka_matrix, correlation, redundancy, top_pairs
from toolkit.plugins.analyses.integrity import conflicting_files, integrity, near_duplicates
from toolkit.plugin.results import Figure, Table


def _tables(results) -> dict:
    return {r.name: r.data for r in results if isinstance(r, Table)}


def test_redundancy_and_pairs_on_known_correlations():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 3))
    x = np.c_[base, base[:, 0] + 0.01 * rng.normal(size=500), np.ones(500)]  # feature 3 copies 0; 4 constant
    context = synthetic_context(n_patients=25, per_patient=20)
    context.embeddings = x
    tables = _tables(correlation(context))
    summary = dict(zip(tables["main"]["metric"], tables["main"]["value"]))
    assert summary["n_constant"] == 1 and summary["share_abs_r_gt_0_9"] == pytest.approx(1 / 6)
    r = np.corrcoef(x[:, :4], rowvar=False)
    eigen = np.linalg.eigvalsh(r)
    assert summary["participation_ratio"] == pytest.approx(eigen.sum() ** 2 / (eigen ** 2).sum(), rel=1e-9)
    share = eigen / eigen.sum()
    assert summary["effective_rank"] == pytest.approx(np.exp(-(share * np.log(share)).sum()), rel=1e-6)
    pair = tables["pairs"].iloc[0]
    assert (pair["feature_a"], pair["feature_b"]) == (0, 3) and pair["r"] == pytest.approx(r[0, 3], abs=1e-12)
    assert redundancy(np.eye(3))["effective_rank"] == pytest.approx(3)
    assert len(top_pairs(np.eye(4), np.arange(4), 2)) == 2


def test_linear_cka_matches_the_kernel_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = x @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(60, 7))
    z = rng.normal(size=(60, 4))
    h = np.eye(60) - 1 / 60

    def hsic(a, b):
        return np.trace(h @ a @ a.T @ h @ b @ b.T)

    table = cka_matrix({"x": x, "y": y, "z": z}).set_index(["backbone_a", "backbone_b"])["cka"]
    for a, b in (("x", "y"), ("x", "z"), ("y", "z")):
        first, second = {"x": x, "y": y, "z": z}[a], {"x": x, "y": y, "z": z}[b]
        expected = hsic(first, second) / np.sqrt(hsic(first, first) * hsic(second, second))
        assert table[a, b] == pytest.approx(expected, abs=1e-5) and table[b, a] == table[a, b]
    assert table["x", "y"] > 0.5 > table["x", "z"]
    context = synthetic_context(backbones=("a", "b"))
    results = cka(context)
    assert len(_tables(results)["main"]) == 4 and any(isinstance(r, Figure) for r in results)


def test_cka_of_an_all_zero_backbone_is_nan_with_a_warning_or_a_skip():
    """All-zero embeddings raised ZeroDivisionError (issue #20, limits)."""
    from toolkit.plugin.results import Finding, SkipAnalysis

    rng = np.random.default_rng(2)
    x, zero = rng.normal(size=(40, 5)), np.zeros((40, 3), dtype=np.float32)
    table = cka_matrix({"x": x, "y": x @ rng.normal(size=(5, 4)), "zero": zero}).set_index(["backbone_a", "backbone_b"])["cka"]
    assert np.isnan(table["zero", "zero"]) and np.isnan(table["x", "zero"]) and np.isnan(table["zero", "y"])
    assert table["x", "x"] == 1.0 and 0 < table["x", "y"] <= 1
    context = synthetic_context(backbones=("a", "b", "c"))
    context.all_embeddings["c"] = np.zeros_like(context.all_embeddings["c"])
    results = cka(context)
    findings = [r for r in results if isinstance(r, Finding)]
    assert findings[0].message.startswith("Linear CKA between backbones ranges from") and "(a vs b)" in findings[0].message
    assert findings[1].severity == "warning" and findings[1].message.startswith("c gave the same embedding for every image")
    assert any(isinstance(r, Figure) for r in results)
    context.all_embeddings["b"] = np.zeros_like(context.all_embeddings["b"])
    with pytest.raises(SkipAnalysis, match="^b, c gave the same embedding for every image"):
        cka(context)


def test_clustering_matches_scipy_and_sklearn():
    context = synthetic_context(n_patients=12, per_patient=8, dim=6, signal=3.0, settings=ClusteringSettings())
    x = np.asarray(context.embeddings, dtype=np.float64)
    links = ward_linkage(condensed_euclidean(upper_gram(x)))
    np.testing.assert_allclose(links[:, 2], linkage(x, "ward")[:, 2], rtol=1e-4)
    results = clustering(context)
    table = _tables(results)["main"].set_index("partition")
    labels = context.metadata["label"].to_numpy()
    assert table.loc["label", "silhouette_euclidean"] == pytest.approx(silhouette_score(x, labels), abs=1e-5)
    assert table.loc["label", "silhouette_cosine"] == pytest.approx(silhouette_score(x, labels, metric="cosine"), abs=1e-5)
    assert set(table.index) == {"label", "ward_k2", "ward_k4"}
    assert table.loc["ward_k2", "ari_label"] > 0.3
    assert _tables(results)["linkage"].shape == (95, 5)
    assert purity(np.array([1, 1, 1, 2]), np.array(["a", "a", "b", "b"])) == 0.75
    assert adjusted_rand_score(labels, labels) == table.loc["label", "ari_label"]


def test_ward_merges_equal_scipy_on_exact_distances():
    """Issue #16, item 11: Ward on distances from a float32 Gram matrix reordered near-tied merges (99
    of 299 here); the float64 Gram matrix gives scipy's merges on pdist, every one."""
    from scipy.spatial.distance import pdist

    x = (np.abs(np.random.default_rng(0).normal(size=(300, 512))) + 5).astype(np.float32)
    links = ward_linkage(condensed_euclidean(upper_gram(x)))
    reference = linkage(pdist(x.astype(np.float64)), "ward")
    assert (links[:, :2] == reference[:, :2]).all()
    np.testing.assert_allclose(links[:, 2], reference[:, 2], rtol=1e-9)


def _full_distances(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two distance matrices as the clustering once built them: whole, from a full float64 Gram."""
    gram = x.astype(np.float64) @ x.T.astype(np.float64)
    squared = np.diag(gram).copy()
    euclidean = np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2 * gram, 0, None))
    norms = np.sqrt(squared)
    norms[norms == 0] = 1.0
    cosine = np.clip(1 - gram / norms[:, None] / norms[None, :], 0, 2)
    for matrix in (euclidean, cosine):
        np.fill_diagonal(matrix, 0)
    return euclidean, cosine


def test_strip_distances_give_sklearn_silhouettes_and_the_condensed_matrix(monkeypatch):
    """Distances built a strip at a time (strips smaller than the data) equal the full matrices; the
    silhouettes from per-cluster distance sums equal scikit-learn's on the full matrices."""
    from scipy.spatial.distance import squareform

    import toolkit.analysis.ward as module

    monkeypatch.setattr(module, "STRIP_ROWS", 64)
    rng = np.random.default_rng(5)
    x = np.abs(rng.normal(size=(300, 24)) + rng.normal(size=(3, 24))[rng.integers(0, 3, 300)])
    x[7] = 0  # a zero row: its cosine distances are 1
    euclidean, cosine = _full_distances(x)
    gram = upper_gram(x)
    np.testing.assert_allclose(condensed_euclidean(gram), squareform(euclidean, checks=False), rtol=1e-6)
    partitions = {"three": rng.integers(0, 3, 300), "two": rng.integers(5, 7, 300),
                  "with_a_singleton": np.r_[0, np.ones(299, int)]}
    scores = silhouettes(gram, partitions)
    for name, partition in partitions.items():
        for metric, matrix in (("euclidean", euclidean), ("cosine", cosine)):
            expected = silhouette_score(matrix, partition, metric="precomputed")
            assert scores[name][f"silhouette_{metric}"] == pytest.approx(expected, abs=1e-9), (name, metric)
    members = np.eye(3)[partitions["three"]]
    sums = cluster_distance_sums(gram, members)
    np.testing.assert_allclose(sums[0], euclidean @ members, rtol=1e-12)
    with pytest.raises(ValueError, match="2 to n - 1 clusters"):
        silhouette(sums[0][:, :1], np.zeros(300, int))


def test_integrity_finds_conflicts_and_near_duplicates():
    context = synthetic_context(dim=16)
    meta = context.metadata
    meta.loc[1, ["sha256", "subtype", "patient_id"]] = [meta.loc[0, "sha256"], "other", "14-999"]
    x = np.array(context.embeddings)
    partner = int(np.flatnonzero(meta["patient_id"] != meta.loc[3, "patient_id"])[0])
    x[partner] = x[3] * 1.001
    context.embeddings = x
    conflicts = conflicting_files(meta)
    assert len(conflicts) == 2 and set(conflicts["conflict"]) == {"subtype, patient_id"}
    pairs = near_duplicates(x, meta)
    assert len(pairs) == 1 and set(pairs[["image_id_a", "image_id_b"]].iloc[0]) == set(meta.loc[[3, partner], "image_id"])
    results = integrity(context)
    assert set(_tables(results)) == {"conflicts", "near_duplicates", "balance"}
    messages = " ".join(r.message for r in results if hasattr(r, "severity"))
    assert "14-" not in messages, messages
    assert "conflicting patient_id and subtype" in messages


def test_integrity_of_class_folders_without_patient_ids_or_magnifications_speaks_of_neither():
    """Class folders give no patient id and no magnification: no "different patients", no nan%."""
    context = synthetic_context(dim=16)
    meta = context.metadata
    meta["patient_id"] = None
    meta["magnification"] = None
    x = np.array(context.embeddings)
    x[5] = x[3] * 1.001
    context.embeddings = x
    results = integrity(context)
    messages = " ".join(r.message for r in results if hasattr(r, "severity"))
    assert "patient" not in messages.lower() and "nan%" not in messages, messages
    assert "1 pairs of different images have embeddings with centred cosine" in messages
    assert "benign 33%–33% of images" in messages
    tables = {r.name: r for r in results if isinstance(r, Table)}
    assert "n_patients" not in tables["balance"].data.columns
    assert "patient" not in tables["near_duplicates"].description + tables["balance"].description


def test_near_duplicates_are_judged_by_centred_cosine():
    """Issue #16, item 9: embeddings that share a large mean (random weights, pooled ReLU features) have
    plain cosine near 1 for every pair; only the planted near-copy is alike once the mean is removed."""
    context = synthetic_context(n_patients=12, per_patient=8, dim=32)
    meta = context.metadata
    rng = np.random.default_rng(1)
    x = 50.0 + rng.normal(0, 1, (len(meta), 32))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (unit @ unit.T).min() > 0.999  # plain cosine would call every pair a near-duplicate
    partner = int(np.flatnonzero(meta["patient_id"] != meta.loc[3, "patient_id"])[0])
    x[partner] = x[3] + rng.normal(0, 0.001, 32)
    pairs = near_duplicates(x, meta)
    assert len(pairs) == 1 and set(pairs[["image_id_a", "image_id_b"]].iloc[0]) == set(meta.loc[[3, partner], "image_id"])
    assert pairs["centred_cosine"].iloc[0] > 0.999
