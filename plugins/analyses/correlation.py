"""Redundancy within a backbone (feature correlations, effective rank) and similarity between
backbones (linear CKA on the same images). Registers two analyses: ``correlation`` and ``cka``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit import (Analysis, AnalysisContext, Figure, Finding, Needs, ReportContext, ReportSection, SkipAnalysis,
                     Table, hookimpl, lazy_import, new_figure, to_svg)

pd = lazy_import("pandas")

REDUNDANT_R = 0.9
TOP_PAIRS = 20
HEATMAP_FEATURES = 40


def correlation_matrix(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of the non-constant columns of ``x`` and their indices."""
    varying = np.flatnonzero(np.ptp(x, axis=0) > 0)
    z = x[:, varying].astype(np.float64)
    z -= z.mean(axis=0)
    z /= np.linalg.norm(z, axis=0)
    return z.T @ z, varying


def redundancy(r: np.ndarray) -> dict[str, float]:
    """share_abs_r_gt_0_9 and mean_abs_r over distinct pairs; participation_ratio
    ((Σλ)² / Σλ² of the correlation eigenvalues) and effective_rank (exp of their entropy,
    Roy & Vetterli 2007)."""
    upper = np.abs(r[np.triu_indices(len(r), k=1)])
    eigen = np.clip(np.linalg.eigvalsh(r), 0, None)
    share = eigen / eigen.sum()
    entropy = -np.sum(share[share > 0] * np.log(share[share > 0]))
    return {"share_abs_r_gt_0_9": float((upper > REDUNDANT_R).mean()) if len(upper) else 0.0,
            "mean_abs_r": float(upper.mean()) if len(upper) else 0.0,
            "participation_ratio": float(len(r) ** 2 / np.sum(r ** 2)), "effective_rank": float(np.exp(entropy))}


def top_pairs(r: np.ndarray, features: np.ndarray, k: int) -> pd.DataFrame:
    """The ``k`` most correlated distinct feature pairs: columns feature_a, feature_b, r."""
    first, second = np.triu_indices(len(r), k=1)
    values = r[first, second]
    best = np.argsort(-np.abs(values), kind="stable")[:k]
    return pd.DataFrame({"feature_a": features[first[best]], "feature_b": features[second[best]], "r": values[best]})


def correlation(context: AnalysisContext) -> list:
    """Table ``main`` (metric, value: n_features, n_constant and :func:`redundancy`), table ``pairs``
    (see :func:`top_pairs`), a finding and a heatmap of the highest-variance features."""
    x = np.asarray(context.embeddings)
    r, features = correlation_matrix(x)
    if len(features) < 2:
        raise SkipAnalysis("fewer than 2 non-constant features; no correlations to compute")
    summary = {"n_features": float(len(features)), "n_constant": float(x.shape[1] - len(features)), **redundancy(r)}
    main = pd.DataFrame({"metric": list(summary), "value": list(summary.values())})
    finding = Finding(f"{summary['share_abs_r_gt_0_9']:.2%} of feature pairs have |r| > {REDUNDANT_R}; the "
                      f"{len(features)} non-constant features have an effective rank of {summary['effective_rank']:.0f} "
                      f"(participation ratio {summary['participation_ratio']:.1f}).", detail=summary)
    return [Table("main", main, "Feature redundancy within the backbone"),
            Table("pairs", top_pairs(r, features, TOP_PAIRS), "Most correlated feature pairs"),
            finding, _heatmap(context.backbone, x, r, features)]


def _heatmap(backbone: str | None, x: np.ndarray, r: np.ndarray, features: np.ndarray) -> Figure:
    chosen = np.sort(np.argsort(-x[:, features].var(axis=0), kind="stable")[:HEATMAP_FEATURES])
    figure, axes = new_figure(5.2, 4.4)
    image = axes.imshow(r[np.ix_(chosen, chosen)], cmap="RdBu_r", vmin=-1, vmax=1)
    figure.colorbar(image, ax=axes, label="Pearson r")
    axes.set_xlabel(f"feature (the {len(chosen)} of highest variance, by index)")
    axes.set_ylabel("feature")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"{backbone}: feature correlations")
    return Figure("heatmap", to_svg(figure),
                  alt=f"Heatmap of Pearson correlations among the {len(chosen)} highest-variance features of {backbone}.",
                  caption="Red: positively correlated, blue: negatively; dark blocks are redundant features.")


def _frobenius(product: np.ndarray) -> float:
    return float(np.linalg.norm(product.astype(np.float64)))


def cka_matrix(embeddings: dict[str, np.ndarray]) -> pd.DataFrame:
    """Linear CKA (Kornblith et al. 2019) of every pair of representations of the same rows,
    ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred matrices (products in float32).
    Columns backbone_a, backbone_b, cka; every ordered pair, the diagonal is 1. A representation
    that is the same for every row (all zeros, say) has no geometry to compare: its pairs are NaN."""
    names = sorted(embeddings)
    centred = {}
    for name in names:
        x = np.asarray(embeddings[name], dtype=np.float64)
        centred[name] = (x - x.mean(axis=0)).astype(np.float32)
    self_norm = {name: _frobenius(c.T @ c) for name, c in centred.items()}
    value = {(a, a): 1.0 if self_norm[a] > 0 else float("nan") for a in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            norms = self_norm[a] * self_norm[b]
            value[a, b] = value[b, a] = (_frobenius(centred[b].T @ centred[a]) ** 2 / norms if norms > 0
                                         else float("nan"))
    return pd.DataFrame([{"backbone_a": a, "backbone_b": b, "cka": value[a, b]} for a in names for b in names])


def cka(context: AnalysisContext) -> list:
    """Table ``main`` (see :func:`cka_matrix`), a finding with the most and least similar pair
    and a matrix heatmap; a warning names the backbones whose embeddings are the same for every
    image (their CKA is NaN), and the analysis is skipped when no pair is left."""
    table = cka_matrix(context.all_embeddings)
    constant = sorted(table.loc[(table["backbone_a"] == table["backbone_b"]) & table["cka"].isna(), "backbone_a"])
    pairs = table[table["backbone_a"] < table["backbone_b"]].dropna(subset=["cka"]).sort_values("cka")
    if pairs.empty:
        raise SkipAnalysis(f"{', '.join(constant)} gave the same embedding for every image (all zeros, say): "
                           "linear CKA is undefined; check the backbone's weights and inputs")
    low, high = pairs.iloc[0], pairs.iloc[-1]
    findings = [Finding(f"Linear CKA between backbones ranges from {low.cka:.3f} ({low.backbone_a} vs "
                        f"{low.backbone_b}) to {high.cka:.3f} ({high.backbone_a} vs {high.backbone_b}).",
                        detail={"min": float(low.cka), "max": float(high.cka)})]
    if constant:
        findings.append(Finding(f"{', '.join(constant)} gave the same embedding for every image (all zeros, say): "
                                "its linear CKA with any backbone is undefined (NaN); check its weights and inputs.",
                                "warning", detail={"constant": constant}))
    return [Table("main", table, "Linear CKA between every pair of backbones"), *findings,
            _cka_figure(table, sorted(context.all_embeddings))]


def _cka_figure(table: pd.DataFrame, names: list[str]) -> Figure:
    matrix = table.pivot(index="backbone_a", columns="backbone_b", values="cka").loc[names, names].to_numpy()
    figure, axes = new_figure(3.2 + 0.5 * len(names), 2.8 + 0.4 * len(names))
    image = axes.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="linear CKA")
    axes.set_xticks(range(len(names)), names, rotation=30)
    axes.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axes.set_xlabel("backbone")
    axes.set_ylabel("backbone")
    axes.set_title("Representation similarity (linear CKA)")
    return Figure("matrix", to_svg(figure),
                  alt="Matrix of linear CKA between backbones: " + "; ".join(
                      f"{r.backbone_a} vs {r.backbone_b} {r.cka:.2f}" for r in table.itertuples()
                      if r.backbone_a < r.backbone_b),
                  caption="1 = the same geometry up to rotation and scale; 0 = unrelated.")


@hookimpl
def register_analyses(register):
    """Register ``correlation`` (per backbone) and ``cka`` (across backbones)."""
    register(Analysis(name="correlation", run=correlation, needs=Needs(min_samples=3), title="Feature redundancy", order=50,
                      description="How correlated the features of one backbone are, and how many directions they span."))
    register(Analysis(name="cka", run=cka, needs=Needs(min_samples=3, all_backbones=True),
                      title="Backbone similarity",
                      description="Linear CKA between every pair of backbones on the same images."))


CKA_TEMPLATE = Path(__file__).parent / "templates" / "cka.html"


@hookimpl
def report_sections(context: ReportContext) -> list[ReportSection]:
    """Backbone × backbone linear CKA, under the comparison table, when cka ran."""
    frame = context.store.results.run_results(context.run_id, "cka")
    if frame.empty:
        return []
    names = sorted(set(frame["backbone_a"]) | set(frame["backbone_b"]))
    values = {(a, b): c for a, b, c in frame[["backbone_a", "backbone_b", "cka"]].itertuples(index=False)}
    cell = lambda a, b: 1.0 if a == b else values.get((a, b), values.get((b, a)))  # noqa: E731
    return [ReportSection(slot="comparison", template=CKA_TEMPLATE,
                          data={"cka": {"names": names, "rows": [[cell(a, b) for b in names] for a in names]}})]
