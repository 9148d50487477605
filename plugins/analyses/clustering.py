"""Ward hierarchical clustering of the images, and how well clusters and classes agree.

Silhouettes are computed on the full embedding (no PCA, no scaling), over every image, with
Euclidean and with cosine distance, for the label partition and for the Ward cuts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit import hookimpl
from toolkit.figures import colour_for, new_figure, to_svg
from toolkit.kinds import Analysis, AnalysisContext, Needs
from toolkit.plugins.analyses.stats_common import group_codes
from toolkit.results import Figure, Finding, SkipAnalysis, Table

MAX_IMAGES = 10_000
DENDROGRAM_LEAVES = 30
REFERENCES = ("label", "subtype")


def distance_matrices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean and cosine distance matrices of the rows of ``x`` from one float32 Gram matrix."""
    gram = (x.astype(np.float32) @ x.T.astype(np.float32)).astype(np.float64)
    squared = np.diag(gram).copy()
    euclidean = np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2 * gram, 0, None))
    norms = np.sqrt(squared)
    norms[norms == 0] = 1.0
    cosine = np.clip(1 - gram / norms[:, None] / norms[None, :], 0, 2)
    for matrix in (euclidean, cosine):
        np.fill_diagonal(matrix, 0)
    return euclidean, cosine


def ward_linkage(euclidean: np.ndarray) -> np.ndarray:
    """SciPy Ward linkage ``(n - 1, 4)`` of a Euclidean distance matrix."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    return linkage(squareform(euclidean, checks=False), method="ward")


def purity(cluster: np.ndarray, reference: np.ndarray) -> float:
    """Share of items whose cluster's majority reference class is their own."""
    table = pd.crosstab(cluster, reference)
    return float(table.max(axis=1).sum() / table.to_numpy().sum())


def partition_scores(partition: np.ndarray, euclidean: np.ndarray, cosine: np.ndarray,
                     references: dict[str, np.ndarray]) -> dict[str, float]:
    """silhouette_euclidean, silhouette_cosine, and ari_<ref>, nmi_<ref>, purity_<ref> for each reference."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    scores = {f"silhouette_{name}": float(silhouette_score(matrix, partition, metric="precomputed"))
              for name, matrix in (("euclidean", euclidean), ("cosine", cosine))}
    for name, reference in references.items():
        scores |= {f"ari_{name}": adjusted_rand_score(reference, partition),
                   f"nmi_{name}": normalized_mutual_info_score(reference, partition),
                   f"purity_{name}": purity(partition, reference)}
    return scores


def _sample(context: AnalysisContext) -> tuple[np.ndarray, pd.DataFrame, list[Finding]]:
    meta = context.metadata.reset_index(drop=True)
    limit = int(context.settings.get("clustering_max_images", MAX_IMAGES))
    if len(meta) <= limit:
        return np.asarray(context.embeddings, dtype=np.float64), meta, []
    keep = np.sort(np.random.default_rng(context.seed).choice(len(meta), limit, replace=False))
    note = Finding(f"Clustering used a random sample of {limit} of {len(meta)} images (clustering_max_images).",
                   "warning")
    return np.asarray(context.embeddings, dtype=np.float64)[keep], meta.iloc[keep].reset_index(drop=True), [note]


def clustering(context: AnalysisContext) -> list:
    """Table ``main``: one row per partition (label, and ward_k<k> for k = number of labels and
    of subtypes): partition, n_clusters and :func:`partition_scores`. Table ``linkage``: step,
    cluster_a, cluster_b, distance, size (SciPy's linkage matrix, for dendrograms). A finding and a
    dendrogram of the last 30 merges coloured by majority class."""
    from scipy.cluster.hierarchy import fcluster

    x, meta, findings = _sample(context)
    if np.allclose(x.std(axis=0), 0):
        raise SkipAnalysis("every feature is constant; nothing to cluster")
    references = {name: group_codes(meta[name])[0] for name in REFERENCES
                  if name in meta and meta[name].notna().all() and meta[name].nunique() >= 2}
    if "label" not in references:
        raise SkipAnalysis("clustering is compared with the label; it needs at least 2 labels and no missing one")
    euclidean, cosine = distance_matrices(x)
    links = ward_linkage(euclidean)
    partitions = {"label": references["label"]}
    for k in sorted({int(codes.max()) + 1 for codes in references.values()}):
        partitions[f"ward_k{k}"] = fcluster(links, k, criterion="maxclust")
    rows = [{"partition": name, "n_clusters": len(np.unique(p)), **partition_scores(p, euclidean, cosine, references)}
            for name, p in partitions.items()]
    table = pd.DataFrame(rows)
    label_row, cut_row = table.iloc[0], table[table["partition"].str.startswith("ward_")].iloc[0]
    findings.append(Finding(
        f"Silhouette of the label partition: {label_row.silhouette_euclidean:.3f} (Euclidean), "
        f"{label_row.silhouette_cosine:.3f} (cosine). The Ward {cut_row.partition} cut agrees with the label at "
        f"ARI {cut_row.ari_label:.3f}, NMI {cut_row.nmi_label:.3f}, purity {cut_row.purity_label:.3f}.",
        detail=table.set_index("partition").to_dict("index")))
    linkage_table = pd.DataFrame({"step": np.arange(1, len(links) + 1), "cluster_a": links[:, 0].astype(int),
                                  "cluster_b": links[:, 1].astype(int), "distance": links[:, 2],
                                  "size": links[:, 3].astype(int)})
    return [Table("main", table, "Agreement of partitions with classes; silhouettes"),
            Table("linkage", linkage_table, "Ward linkage (SciPy format) for dendrograms"),
            *findings, _dendrogram(context.backbone, links, meta["label"].astype(str).to_numpy())]


def node_counts(links: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Class counts ``(2n - 1, n_classes)`` of every node of the tree (leaves first)."""
    n = len(codes)
    counts = np.zeros((2 * n - 1, n_classes), dtype=np.int64)
    counts[np.arange(n), codes] = 1
    for step, (a, b) in enumerate(links[:, :2].astype(int)):
        counts[n + step] = counts[a] + counts[b]
    return counts


def _dendrogram(backbone: str | None, links: np.ndarray, labels: np.ndarray) -> Figure:
    from scipy.cluster.hierarchy import dendrogram

    codes, classes = group_codes(pd.Series(labels))
    counts = node_counts(links, codes, len(classes))
    figure, axes = new_figure(6.4, 3.8)
    tree = dendrogram(links, p=DENDROGRAM_LEAVES, truncate_mode="lastp", ax=axes, color_threshold=0,
                      above_threshold_color="#555555", leaf_rotation=90,
                      leaf_label_func=lambda node: f"n={counts[node].sum()}")
    for tick, node in zip(axes.get_xticklabels(), tree["leaves"]):
        tick.set_color(colour_for(classes[int(counts[node].argmax())], classes))
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(color=colour_for(c, classes), label=c) for c in classes], frameon=False,
                title="majority class", fontsize=7)
    axes.set_xlabel(f"clusters (the last {DENDROGRAM_LEAVES} merges), labelled with their size")
    axes.set_ylabel("Ward merge distance")
    axes.set_title(f"{backbone}: Ward dendrogram")
    return Figure("dendrogram", to_svg(figure),
                  alt=f"Dendrogram of Ward clustering of {len(labels)} images truncated to {len(tree['leaves'])} "
                      "clusters; each leaf's label gives its size and its colour the majority class.",
                  caption="Leaf label colour: the majority class of the cluster.")


@hookimpl
def register_analyses(register):
    """Register ``clustering``."""
    register(Analysis(name="clustering", run=clustering, needs=Needs(labels=True, min_samples=4),
                      title="Hierarchical clustering",
                      description="Ward clustering of the images; silhouettes, adjusted Rand index, NMI and purity "
                                  "against label and subtype."))
