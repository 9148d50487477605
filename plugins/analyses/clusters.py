"""Which features tell the Ward clusters apart, and do the clusters line up with label, subtype and the
categorical clinical columns?

Testing features between clusters that were formed from those same features is circular: Ward puts
its boundaries where the features differ, so the p-values are optimistic and come out significant even
on pure noise. Every feature test is therefore run twice, recorded in the ``design`` column:

- ``circular`` (optimistic): the cuts of ``clustering``'s own Ward tree, tested on the images it clustered.
- ``split`` (honest): the patients (the images, without patient ids) are split in two halves with the
  run seed, stratified by label; Ward clusters half A, every image of half B joins the nearest centroid
  of A's clusters, and the features are tested on half B only. The clustering never saw the images it
  is tested on, so the p-values are valid for the question "do the images on either side of the rule
  learned on A differ?". A rule learned on noise still cuts the data in two, so a significant split
  result says that the partition is reproducible, not that the clusters are natural groups.

k = 2 compares cluster 2 with cluster 1 (Welch's t, Mann–Whitney U, Hedges' g, BH); k > 2 tests the
clusters together (one-way ANOVA, Kruskal–Wallis) and each cluster against the rest of the images
(Welch, Mann–Whitney) for its top features. Images and per-patient means (``level``), as in ``ttest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit import (Analysis, AnalysisContext, Figure, Finding, Needs, PALETTE, ReportContext, ReportSection,
                     SkipAnalysis, Table, hookimpl, lazy_import, new_figure, setting, to_svg)
from toolkit.stats import (FDR_ALPHA, WARD_MAX_IMAGES, compare_two, cut, has_patients, level_views, one_way, patient_note,
                           sample_rows, top_rows, ward_of)

pd = lazy_import("pandas")
stats = lazy_import("scipy.stats")

TOP_K = 10
REFERENCES = ("label", "subtype")
FISHER_BELOW = 5  # a 2 x 2 table with an expected count below this gets Fisher's exact test instead of chi²
CIRCULAR_NOTE = (
    "Testing features between clusters that were formed from the same features is circular: the clustering "
    "drew its boundaries where the features differ, so the 'circular' p-values are optimistic and many features "
    "come out significant even on pure noise. The 'split' rows are the honest version: clusters formed on one "
    "half of the patients, features tested on the other half. A partition learned on noise still divides new "
    "images in two, so even the split rows show that a partition is reproducible, not that it is a natural "
    "group; the contingency tables say whether it matches label, subtype or a clinical column.")
DESIGN_WORDS = {"circular": "circular (optimistic)", "split": "split-sample (honest)"}


@dataclass(frozen=True)
class Partition:
    """One cut into clusters: the metadata rows it covers and each row's cluster (1..k)."""

    design: str  # "circular" or "split"
    k: int
    rows: np.ndarray
    clusters: np.ndarray


def cluster_counts(requested: tuple[int, ...], metadata: pd.DataFrame) -> list[int]:
    """The k values to cut at, sorted: ``requested``, each at least 2, or for none (``auto``) 2 and the
    number of subtypes (as ``clustering`` cuts)."""
    if not requested:
        n_subtypes = metadata["subtype"].nunique() if "subtype" in metadata else 0
        return sorted({2} | ({n_subtypes} if n_subtypes >= 2 else set()))
    if min(requested) < 2:
        raise SkipAnalysis(f"clusters.k {','.join(map(str, requested))}: every k must be at least 2; "
                           "set it with --set clusters.k=2,4")
    return sorted(set(requested))


def halves(metadata: pd.DataFrame, seed: int) -> np.ndarray:
    """Whether each image falls in half A: patients (every image, without patient ids) shuffled with
    ``seed`` within each label (a patient's most common label) and the first half of each label taken,
    so that both halves hold every label and no patient is in both."""
    units = metadata["patient_id"].to_numpy() if has_patients(metadata) else np.arange(len(metadata))
    frame = pd.DataFrame({"unit": units, "label": metadata["label"].astype(str).to_numpy()})
    unit_labels = frame.groupby("unit", sort=True)["label"].agg(lambda labels: labels.value_counts().index[0])
    rng = np.random.default_rng(seed)
    chosen: list = []
    for _, members in unit_labels.groupby(unit_labels, sort=True):
        shuffled = rng.permutation(members.index.to_numpy())
        chosen += list(shuffled[:(len(shuffled) + 1) // 2])
    return frame["unit"].isin(chosen).to_numpy()


def nearest_centroid(x_fit: np.ndarray, clusters_fit: np.ndarray, k: int, x_new: np.ndarray) -> np.ndarray:
    """Cluster (1..k) of the centroid of ``x_fit``'s clusters nearest (Euclidean) to each row of ``x_new``."""
    centroids = np.stack([x_fit[clusters_fit == c].mean(axis=0) for c in range(1, k + 1)])
    distances = (centroids ** 2).sum(axis=1)[None, :] - 2 * x_new @ centroids.T  # |x|² is the same for every centroid
    return distances.argmin(axis=1) + 1


def circular_partitions(links: np.ndarray, n_images: int, ks: list[int], seed: int) -> list[Partition]:
    """The cuts of ``clustering``'s stored Ward tree; its leaves are the images :func:`sample_rows` gives
    for as many leaves as the tree has."""
    n_leaves = len(links) + 1
    if n_leaves > n_images:
        raise SkipAnalysis(f"the stored clustering has {n_leaves} leaves but the run has {n_images} images")
    rows = sample_rows(n_images, n_leaves, seed)
    return [Partition("circular", k, rows, cut(links, k)) for k in ks if k < n_leaves]


def split_partitions(x: np.ndarray, metadata: pd.DataFrame, ks: list[int], seed: int) -> list[Partition]:
    """Ward on half A (:func:`halves`; a seeded sample of at most 10,000 of its images), half B
    assigned to the nearest centroid of A's clusters."""
    in_a = halves(metadata, seed)
    fit, test = np.flatnonzero(in_a), np.flatnonzero(~in_a)
    fit = fit[sample_rows(len(fit), WARD_MAX_IMAGES, seed)]
    if len(fit) < 4 or len(test) < 4:
        return []
    links = ward_of(x[fit])
    x_fit, x_test = x[fit].astype(np.float64), x[test].astype(np.float64)
    return [Partition("split", k, test, nearest_centroid(x_fit, cut(links, k), k, x_test))
            for k in ks if k < len(fit)]


def contrasts(k: int) -> list[tuple[str, str]]:
    """(group_a, group_b) pairs: cluster 2 against cluster 1 for k = 2, else each cluster against the rest."""
    if k == 2:
        return [("cluster 1", "cluster 2")]
    return [("rest", f"cluster {c}") for c in range(1, k + 1)]


def feature_tests(x: np.ndarray, metadata: pd.DataFrame, part: Partition) -> tuple[list, list, list[Finding]]:
    """Every feature's tests for one partition: the pairwise contrasts (see :func:`contrasts`; columns
    design, k, contrast and those of ``toolkit.stats.compare_two`` but grouping) and, for k > 2, the
    omnibus tests (``toolkit.stats.one_way``'s columns but factor), at image and patient level."""
    meta = metadata.iloc[part.rows].reset_index(drop=True)
    values, names = x[part.rows], np.array([f"cluster {c}" for c in part.clusters], dtype=object)
    pairwise, omnibus, findings = [], [], []
    tag = {"design": part.design, "k": part.k}
    for group_a, group_b in contrasts(part.k):
        groups = names if part.k == 2 else np.where(names == group_b, group_b, "rest")
        for view in level_views(meta.assign(cluster=groups), values, "cluster"):
            if min((view.groups == group_a).sum(), (view.groups == group_b).sum()) < 2:
                findings.append(Finding(f"{DESIGN_WORDS[part.design]}, k = {part.k}: no {view.level}-level test of "
                                        f"{group_b} against {group_a}; each side needs at least 2 {view.level}s.",
                                        "warning"))
                continue
            table = compare_two(view, "cluster", group_a, group_b).drop(columns="grouping")
            pairwise.append(table.assign(**tag, contrast=f"{group_b} vs {group_a}"))
    if part.k > 2:
        for view in level_views(meta.assign(cluster=names), values, "cluster"):
            table = one_way(view, "cluster")
            if table is not None:
                omnibus.append(table.drop(columns="factor").assign(**tag))
    return pairwise, omnibus, findings


def association(table: pd.DataFrame) -> dict[str, float | str | int]:
    """χ² test of a contingency table (``scipy.stats.chi2_contingency``, Yates-corrected for 2 x 2),
    Fisher's exact test instead for a 2 x 2 table with an expected count below 5, and Cramér's V from
    the uncorrected χ² with its bias-corrected version (Bergsma 2013): columns n, n_clusters, n_values,
    test, chi2, dof, p_val, cramers_v, cramers_v_bc, min_expected."""
    counts = table.to_numpy()
    n, (r, c) = int(counts.sum()), counts.shape
    chi2, p, dof, expected = stats.chi2_contingency(counts)
    test = "chi2"
    if (r, c) == (2, 2) and expected.min() < FISHER_BELOW:
        test, p = "fisher", float(stats.fisher_exact(counts).pvalue)
    phi2 = stats.chi2_contingency(counts, correction=False)[0] / n
    phi2_bc = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    r_bc, c_bc = r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)
    denominator = min(r_bc - 1, c_bc - 1)
    return {"n": n, "n_clusters": r, "n_values": c, "test": test, "chi2": float(chi2), "dof": int(dof),
            "p_val": float(p), "cramers_v": float(np.sqrt(phi2 / (min(r, c) - 1))),
            "cramers_v_bc": float(np.sqrt(phi2_bc / denominator)) if denominator > 0 else float("nan"),
            "min_expected": float(expected.min())}


def _per_patient(meta: pd.DataFrame, clusters: np.ndarray, reference: str) -> tuple[np.ndarray, pd.Series]:
    """Each patient's most common cluster and most common ``reference`` value."""
    frame = pd.DataFrame({"patient": meta["patient_id"].to_numpy(), "cluster": clusters,
                          "value": meta[reference].to_numpy()}).dropna()
    mode = lambda s: s.value_counts().sort_index(kind="stable").idxmax()  # noqa: E731 - ties: the smallest
    per = frame.groupby("patient").agg(cluster=("cluster", mode), value=("value", mode))
    return per["cluster"].to_numpy(), per["value"]


def contingency(metadata: pd.DataFrame, part: Partition, references: list[str]) -> tuple[list[dict], list[pd.DataFrame]]:
    """Clusters against each reference column at image level and, with patient ids, patient level
    (a patient's most common cluster and value): one :func:`association` row per reference and level,
    and the counts (design, k, level, reference, cluster, value, n)."""
    meta = metadata.iloc[part.rows].reset_index(drop=True)
    rows, counts = [], []
    for reference in references:
        present = meta[reference].notna().to_numpy()
        levels = [("image", part.clusters[present], meta.loc[present, reference])]
        if has_patients(meta):
            levels.append(("patient", *_per_patient(meta, part.clusters, reference)))
        for level, clusters, values in levels:
            table = pd.crosstab(np.asarray(clusters), values.astype(str).to_numpy(), rownames=["cluster"],
                                colnames=["value"])
            if min(table.shape) < 2:
                continue
            tag = {"design": part.design, "k": part.k, "level": level, "reference": reference}
            rows.append(tag | association(table))
            long = table.stack().rename("n").reset_index()
            long.columns = ["cluster", "value", "n"]
            counts.append(long.assign(**tag)[["design", "k", "level", "reference", "cluster", "value", "n"]])
    return rows, counts


def summary(pairwise: pd.DataFrame, omnibus: pd.DataFrame) -> pd.DataFrame:
    """Significant features per design, k and level: for k = 2 Welch (and Mann–Whitney), for k > 2
    one-way ANOVA (and Kruskal–Wallis); columns design, k, level, test, n_tested, n_significant,
    n_significant_rank."""
    rows = []
    for (design, k, level), group in pairwise[pairwise["k"] == 2].groupby(["design", "k", "level"], sort=False):
        rows.append({"design": design, "k": k, "level": level, "test": "welch", "n_tested": len(group),
                     "n_significant": int((group["q_val"] < FDR_ALPHA).sum()),
                     "n_significant_rank": int((group["q_val_mwu"] < FDR_ALPHA).sum())})
    if not omnibus.empty:
        for (design, k, level), group in omnibus.groupby(["design", "k", "level"], sort=False):
            rows.append({"design": design, "k": k, "level": level, "test": "anova", "n_tested": len(group),
                         "n_significant": int((group["q_val"] < FDR_ALPHA).sum()),
                         "n_significant_rank": int((group["q_val_kw"] < FDR_ALPHA).sum())})
    return pd.DataFrame(rows, columns=["design", "k", "level", "test", "n_tested", "n_significant",
                                       "n_significant_rank"])


def _findings(table: pd.DataFrame, associations: pd.DataFrame) -> list[Finding]:
    findings = []
    for k, group in table.groupby("k"):
        level = "patient" if (group["level"] == "patient").any() else "image"
        parts = [f"{DESIGN_WORDS[row.design]} {row.n_significant} of {row.n_tested}"
                 for row in group[group["level"] == level].itertuples()]
        test = "Welch t" if k == 2 else "one-way ANOVA"
        findings.append(Finding(f"k = {k}, {level} level: features that differ between the Ward clusters at "
                                f"q < {FDR_ALPHA} ({test}, Benjamini–Hochberg): {'; '.join(parts)}.",
                                detail={"k": int(k), "level": level,
                                        **{f"n_significant_{r.design}": r.n_significant
                                           for r in group[group["level"] == level].itertuples()}}))
    circular = associations[(associations["design"] == "circular") & (associations["level"] == "image")]
    for row in circular.itertuples():
        findings.append(Finding(f"Ward k = {row.k} clusters against {row.reference}: Cramér's V {row.cramers_v:.2f} "
                                f"({'Fisher' if row.test == 'fisher' else 'χ²'} p = {row.p_val:.2g}, images).",
                                detail={"k": int(row.k), "reference": row.reference, "cramers_v": row.cramers_v}))
    return findings


def _figure(backbone: str | None, summary_table: pd.DataFrame) -> Figure:
    """Share of features significant per k, circular against split-sample, at patient level when the
    run has patient ids."""
    level = "patient" if (summary_table["level"] == "patient").any() else "image"
    rows = summary_table[summary_table["level"] == level]
    ks = sorted(rows["k"].unique())
    figure, axes = new_figure(4.8, 3.2)
    width = 0.38
    for offset, (design, colour) in enumerate(zip(("circular", "split"), (PALETTE[1], PALETTE[0]))):
        of_design = rows[rows["design"] == design].set_index("k")
        shares = [of_design.loc[k, "n_significant"] / of_design.loc[k, "n_tested"] if k in of_design.index else 0.0
                  for k in ks]
        axes.bar(np.arange(len(ks)) + (offset - 0.5) * width, shares, width, color=colour, label=DESIGN_WORDS[design])
    axes.set_xticks(np.arange(len(ks)), [f"k = {k}" for k in ks])
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"share of features with q < {FDR_ALPHA}")
    axes.legend(frameon=False, fontsize=7)
    axes.set_title(f"{backbone}: features that differ between Ward clusters ({level} level)")
    return Figure("significant_features", to_svg(figure),
                  alt=f"Bar chart: for each number of clusters, the share of features that differ between the Ward "
                      f"clusters at {level} level when tested on the clustered images (circular) and on held-out "
                      "patients (split-sample).",
                  caption="Circular bars are optimistic (the clusters were formed from these features); split-sample "
                          "bars test patients the clustering did not see.")


def clusters(context: AnalysisContext) -> list:
    """Tables ``main`` (pairwise feature tests, see :func:`feature_tests`), ``omnibus`` (k > 2),
    ``top`` (the ``top_k`` features of largest |hedges_g| per design, k, contrast and level),
    ``summary`` (:func:`summary`), ``contingency`` (:func:`association` rows with design, k, level,
    reference) and ``counts`` (the contingency tables, long); findings."""
    metadata = context.metadata.reset_index(drop=True)
    x = np.asarray(context.embeddings, dtype=np.float32)
    if np.allclose(x.std(axis=0, dtype=np.float64), 0):
        raise SkipAnalysis("every feature is constant; nothing to cluster")
    ks = cluster_counts(context.settings.k, metadata)
    stored = context.results("clustering", "linkage")
    if stored.empty:
        raise SkipAnalysis("clustering stored no Ward tree for this backbone")
    links = stored.sort_values("step")[["cluster_a", "cluster_b", "distance", "size"]].to_numpy(dtype=np.float64)
    partitions = circular_partitions(links, len(metadata), ks, context.seed)
    if context.settings.split:
        partitions += split_partitions(x, metadata, ks, context.seed)
    references = [r for r in REFERENCES if r in metadata] + [
        name for name, kind in context.clinical_columns.items() if kind == "categorical" and name in metadata]
    pairwise, omnibus, findings = [], [], [patient_note(metadata), Finding(CIRCULAR_NOTE, "warning")]
    associations, counts = [], []
    x64 = x.astype(np.float64)
    for part in partitions:
        part_pairwise, part_omnibus, part_findings = feature_tests(x64, metadata, part)
        pairwise, omnibus, findings = pairwise + part_pairwise, omnibus + part_omnibus, findings + part_findings
        part_rows, part_counts = contingency(metadata, part, references)
        associations, counts = associations + part_rows, counts + part_counts
    if not pairwise:
        raise SkipAnalysis("no cluster had at least 2 images on each side of a comparison")
    first = ["design", "k", "contrast", "level"]
    main = pd.concat(pairwise, ignore_index=True)
    main = main[first + [c for c in main.columns if c not in first]]
    omnibus_table = pd.concat(omnibus, ignore_index=True) if omnibus else pd.DataFrame()
    if not omnibus_table.empty:
        omnibus_table = omnibus_table[["design", "k", "level"] + [c for c in omnibus_table if c not in ("design", "k", "level")]]
    association_table = pd.DataFrame(associations)
    summary_table = summary(main, omnibus_table)
    results: list = [
        Table("main", main, "Welch t and Mann–Whitney U per feature between Ward clusters (circular and split designs)"),
        Table("top", top_rows(main, "hedges_g", context.settings.top_k, first),
              "Features with the largest |Hedges' g| per design, k, contrast and level"),
        Table("summary", summary_table, "Features significant at q < 0.05 per design, k and level")]
    if not omnibus_table.empty:
        results.append(Table("omnibus", omnibus_table, "One-way ANOVA and Kruskal–Wallis per feature across the clusters"))
    if associations:
        results += [Table("contingency", association_table, "Clusters against label, subtype and clinical columns"),
                    Table("counts", pd.concat(counts, ignore_index=True), "Contingency tables, one row per cell")]
    results.append(_figure(context.backbone, summary_table))
    return results + findings + _findings(summary_table, association_table if associations else
                                          pd.DataFrame(columns=["design", "level"]))


@dataclass(frozen=True)
class ClustersSettings:
    """The settings of ``clusters``."""

    k: tuple[int, ...] = setting((), "cluster counts to cut at, e.g. 2,4; auto: 2 and the number of subtypes",
                                 empty="auto")
    top_k: int = setting(TOP_K, "features of largest |hedges_g| per design, k, contrast and level in table top")
    split: bool = setting(True, "also the honest split-sample test (clusters on half the patients, tests on the "
                                "other half)")


@hookimpl
def register_analyses(register):
    """Register ``clusters``."""
    register(Analysis(
        name="clusters", run=clusters, needs=Needs(labels=True, min_samples=8, analyses=("clustering",)), order=25,
        settings=ClustersSettings,
        title="Cluster comparison",
        description="Features that differ between the Ward clusters (Welch, Mann–Whitney, ANOVA, Kruskal–Wallis, BH, "
                    "Hedges' g), circular and split-sample; clusters against label, subtype and clinical columns "
                    "(χ² or Fisher, Cramér's V)."))


CLUSTERS_TEMPLATE = Path(__file__).parent / "templates" / "clusters.html"
REPORT_TEXT = {
    "intro": "Ward clustering groups the images by their embeddings alone, without the labels. Two questions are asked "
             "of those clusters: which embedding features tell them apart, and do they correspond to the label, the "
             "subtype or a clinical column?",
    "circular_note": CIRCULAR_NOTE,
    "features_note": "Features that differ at q < 0.05 after Benjamini–Hochberg correction: Welch's t between the two "
                     "clusters (k = 2), one-way ANOVA across them (k > 2). 'patient' tests one mean per patient and "
                     "cluster; 'image' treats the images as independent and overstates the evidence. The split-sample "
                     "column tests only the half of the patients that the clustering did not see.",
    "association_note": "Cramér's V runs from 0 (the clusters are unrelated to the column) to 1 (each cluster is one "
                        "value of the column); p from χ² (Fisher's exact test for 2 x 2 tables with an expected count "
                        "below 5). Image-level p-values count every image as independent and are optimistic; at patient "
                        "level each patient counts once, in its most common cluster.",
}


def _feature_rows(summary_table: pd.DataFrame) -> list[dict]:
    """One row per backbone, k, level and test: significant features in the circular and split designs."""
    rows = []
    for (backbone, k, level, test), group in summary_table.groupby(["backbone", "k", "level", "test"], sort=True):
        cell = {d.design: f"{d.n_significant:,} of {d.n_tested:,}" for d in group.itertuples()}
        rows.append({"backbone": backbone, "k": int(k), "level": level, "test": "Welch t" if test == "welch" else "ANOVA",
                     "circular": cell.get("circular", "—"), "split": cell.get("split", "not run")})
    return rows


def _association_rows(associations: pd.DataFrame) -> list[dict]:
    """One row per backbone, design, k and reference column: Cramér's V and p at image and patient level."""
    rows = []
    keys = ["backbone", "design", "k", "reference"]
    for (backbone, design, k, reference), group in associations.groupby(keys, sort=True):
        by_level = group.set_index("level")
        value = lambda level, column: (float(by_level.loc[level, column])  # noqa: E731
                                       if level in by_level.index else None)
        rows.append({"backbone": backbone, "design": DESIGN_WORDS.get(design, design), "k": int(k), "reference": reference,
                     "v_image": value("image", "cramers_v"), "p_image": value("image", "p_val"),
                     "v_patient": value("patient", "cramers_v"), "p_patient": value("patient", "p_val")})
    return rows


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """The "Clusters" appendix section: significant features circular against split-sample, and how
    the clusters line up with label, subtype and clinical columns, for every backbone; the full
    summary and contingency tables below."""
    summary_table = context.store.results.run_results(context.run_id, "clusters", "summary")
    if summary_table.empty:
        return []
    associations = context.store.results.run_results(context.run_id, "clusters", "contingency")
    tables = [Table("summary", summary_table.rename(columns={"backbone": "model"}),
                    "Features that differ between the clusters (q < 0.05) per design, k and level")]
    if not associations.empty:
        tables.append(Table("contingency", associations.rename(columns={"backbone": "model"}),
                            "Clusters against label, subtype and clinical columns"))
    data = REPORT_TEXT | {"features": _feature_rows(summary_table),
                          "associations": _association_rows(associations) if not associations.empty else []}
    return [ReportSection("Clusters", tables=tables, slot="appendix", order=30, anchor="clusters",
                          template=CLUSTERS_TEMPLATE, data=data)]
