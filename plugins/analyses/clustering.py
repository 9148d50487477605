"""Ward hierarchical clustering of the images, and how well clusters and classes agree.

Silhouettes are computed on the full embedding (no PCA, no scaling), over every image, with
Euclidean and with cosine distance, for the label partition and for the Ward cuts. No distance
matrix is ever held whole: one float64 Gram matrix gives both distances a strip of rows at a time,
for Ward's condensed input and for the per-cluster distance sums that every silhouette needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit import (Analysis, AnalysisContext, ComparisonColumn, Figure, Finding, Needs, ReportContext, ReportSection,
                     SkipAnalysis, Table, colour_for, format_number, hookimpl, lazy_import, new_figure, setting, to_svg)
from toolkit.stats import (WARD_MAX_IMAGES, condensed_euclidean, cut, distance_strip, group_codes, sample_rows, strips,
                           upper_gram, ward_linkage)

pd = lazy_import("pandas")

MAX_IMAGES = WARD_MAX_IMAGES  # the max_images setting's default
DENDROGRAM_LEAVES = 30
REFERENCES = ("label", "subtype")


def cluster_distance_sums(gram: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each item's summed Euclidean and cosine distance to the members of every cluster: ``D @ members``
    for a 0/1 membership matrix ``(n, n_clusters)``, built strip by strip from an :func:`upper_gram`
    without ever holding a full distance matrix."""
    sums = np.zeros((2, *members.shape))
    for rows in strips(len(gram)):
        for total, distances in zip(sums, distance_strip(gram, rows)):
            total[rows] += distances @ members[rows.start:]
            total[rows.start:] += distances.T @ members[rows]
    return sums[0], sums[1]


def silhouette(sums: np.ndarray, codes: np.ndarray) -> float:
    """Mean silhouette of the partition ``codes`` (0..k-1) from each item's summed distance to every
    cluster ``(n, k)``; as scikit-learn's ``silhouette_score`` on the full distance matrix."""
    sizes = np.bincount(codes)
    if not 2 <= len(sizes) <= len(codes) - 1:
        raise ValueError(f"a silhouette needs 2 to n - 1 clusters, not {len(sizes)}")
    rows = np.arange(len(codes))
    intra = sums[rows, codes] / np.maximum(sizes[codes] - 1, 1)
    others = sums / sizes
    others[rows, codes] = np.inf
    inter = others.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(sizes[codes] > 1, (inter - intra) / np.maximum(intra, inter), 0.0)
    return float(np.nan_to_num(scores).mean())


def purity(cluster: np.ndarray, reference: np.ndarray) -> float:
    """Share of items whose cluster's majority reference class is their own."""
    table = pd.crosstab(cluster, reference)
    return float(table.max(axis=1).sum() / table.to_numpy().sum())


def silhouettes(gram: np.ndarray, partitions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """silhouette_euclidean and silhouette_cosine of every partition, from one pass over the distances
    of an :func:`upper_gram`."""
    codes = {name: np.unique(p, return_inverse=True)[1].ravel() for name, p in partitions.items()}
    members = np.concatenate([np.eye(c.max() + 1)[c] for c in codes.values()], axis=1)  # one column a cluster
    euclidean, cosine = cluster_distance_sums(gram, members)
    starts = np.cumsum([0] + [c.max() + 1 for c in codes.values()])
    return {name: {f"silhouette_{metric}": silhouette(sums[:, start:start + c.max() + 1], c)
                   for metric, sums in (("euclidean", euclidean), ("cosine", cosine))}
            for (name, c), start in zip(codes.items(), starts)}


def partition_scores(partition: np.ndarray, references: dict[str, np.ndarray]) -> dict[str, float]:
    """ari_<ref>, nmi_<ref> and purity_<ref> of a partition for each reference."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    scores = {}
    for name, reference in references.items():
        scores |= {f"ari_{name}": adjusted_rand_score(reference, partition),
                   f"nmi_{name}": normalized_mutual_info_score(reference, partition),
                   f"purity_{name}": purity(partition, reference)}
    return scores


def _sample(context: AnalysisContext) -> tuple[np.ndarray, pd.DataFrame, list[Finding]]:
    meta = context.metadata.reset_index(drop=True)
    limit = context.settings.max_images
    keep = sample_rows(len(meta), limit, context.seed)
    x = np.asarray(context.embeddings, dtype=np.float32)
    if len(keep) == len(meta):
        return x, meta, []
    note = Finding(f"Clustering used a random sample of {limit} of {len(meta)} images (clustering_max_images).",
                   "warning")
    return x[keep], meta.iloc[keep].reset_index(drop=True), [note]


def clustering(context: AnalysisContext) -> list:
    """Table ``main``: one row per partition (label, and ward_k<k> for k = number of labels and
    of subtypes): partition, n_clusters, :func:`silhouettes` and :func:`partition_scores`. Table ``linkage``: step,
    cluster_a, cluster_b, distance, size (SciPy's linkage matrix, for dendrograms). A finding and a
    dendrogram of the last 30 merges coloured by majority class."""
    x, meta, findings = _sample(context)
    if np.allclose(x.std(axis=0, dtype=np.float64), 0):
        raise SkipAnalysis("every feature is constant; nothing to cluster")
    references = {name: group_codes(meta[name])[0] for name in REFERENCES
                  if name in meta and meta[name].notna().all() and meta[name].nunique() >= 2}
    if "label" not in references:
        raise SkipAnalysis("clustering is compared with the label; it needs at least 2 labels and no missing one")
    gram = upper_gram(x)
    links = ward_linkage(condensed_euclidean(gram))
    partitions = {"label": references["label"]}
    for k in sorted({int(codes.max()) + 1 for codes in references.values()}):
        partitions[f"ward_k{k}"] = cut(links, k)
    silhouette_scores = silhouettes(gram, partitions)
    rows = [{"partition": name, "n_clusters": len(np.unique(p)), **silhouette_scores[name],
             **partition_scores(p, references)} for name, p in partitions.items()]
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


@dataclass(frozen=True)
class ClusteringSettings:
    """The settings of ``clustering``."""

    max_images: int = setting(MAX_IMAGES, "most images clustered (a seeded sample beyond it)")


@hookimpl
def register_analyses(register):
    """Register ``clustering``."""
    register(Analysis(name="clustering", run=clustering, needs=Needs(labels=True, min_samples=4), order=20,
                      settings=ClusteringSettings,
                      title="Hierarchical clustering",
                      description="Ward clustering of the images; silhouettes, adjusted Rand index, NMI and purity "
                                  "against label and subtype."))


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The comparison table's silhouette of the label partition."""
    table = context.store.results.run_results(context.run_id, "clustering")
    if table.empty:
        return []
    labels = table[table["partition"] == "label"]
    values = {name: format_number(float(value), 2)
              for name, value in zip(labels["backbone"], labels["silhouette_euclidean"])}
    return [ReportSection.comparison_columns(ComparisonColumn("Silhouette (benign vs malignant)", values, order=20))]
