"""Principal component analysis: explained variance, components to reach 90%, 2-D map of images."""

from __future__ import annotations

import numpy as np

from toolkit import (Analysis, AnalysisContext, Figure, Finding, MARKERS, Needs, SkipAnalysis, Table, colour_for,
                     hookimpl, lazy_import, new_figure, to_svg)

pd = lazy_import("pandas")

MAX_COMPONENTS = 50


def pca(context: AnalysisContext) -> list:
    """Tables ``variance`` (component, explained_variance_ratio, cumulative) and ``coords``
    (image_id, pc1, pc2), a finding with the components needed for 90% and a scatter figure."""
    from sklearn.decomposition import PCA

    x = np.asarray(context.embeddings, dtype=np.float64)
    if np.allclose(x.std(axis=0), 0):
        raise SkipAnalysis("every feature is constant; nothing to decompose")
    n_components = int(min(MAX_COMPONENTS, x.shape[0], x.shape[1]))
    model = PCA(n_components=n_components, svd_solver="covariance_eigh", random_state=context.seed)
    coords = model.fit_transform(x)
    ratio = model.explained_variance_ratio_
    cumulative = np.cumsum(ratio)
    # components are computed on at most MAX_COMPONENTS; the share is of the total variance
    to_90 = int(np.searchsorted(cumulative, 0.9) + 1) if cumulative[-1] >= 0.9 else None
    variance = pd.DataFrame({"component": np.arange(1, n_components + 1), "explained_variance_ratio": ratio,
                             "cumulative": cumulative})
    points = pd.DataFrame({"image_id": context.metadata["image_id"].to_numpy(),
                           "pc1": coords[:, 0], "pc2": coords[:, 1] if n_components > 1 else 0.0})
    message = (f"{to_90} principal component{'s explain' if to_90 > 1 else ' explains'} 90% of the variance"
               if to_90 else f"the first {n_components} components explain {cumulative[-1]:.0%} of the variance")
    return [
        Table("variance", variance, "Explained variance ratio per principal component"),
        Table("coords", points, "First two principal components of every image"),
        Finding(message, detail={"components_to_90": to_90, "pc1": float(ratio[0])}),
        _scatter(context, coords, ratio),
    ]


def _scatter(context: AnalysisContext, coords: np.ndarray, ratio: np.ndarray) -> Figure:
    meta = context.metadata
    labels = sorted(meta["label"].fillna("unlabelled").unique())
    subtypes = sorted(meta["subtype"].dropna().unique())
    figure, axes = new_figure()
    y = coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(coords))
    label_values = meta["label"].fillna("unlabelled").to_numpy()
    subtype_values = meta["subtype"].to_numpy()
    groups = [(lab, sub) for lab in labels for sub in (subtypes or [None])]
    for label, subtype in groups:
        mask = label_values == label
        if subtype is not None:
            mask &= subtype_values == subtype
        if not mask.any():
            continue
        marker = MARKERS[subtypes.index(subtype) % len(MARKERS)] if subtype is not None else "o"
        axes.scatter(coords[mask, 0], y[mask], s=14, alpha=0.75, c=colour_for(label, labels), marker=marker,
                     label=f"{label} · {subtype}" if subtype else label, linewidths=0)
    axes.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    axes.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)" if len(ratio) > 1 else "PC2")
    axes.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes.set_title(f"{context.backbone}: images on the first two principal components")
    return Figure("scatter", to_svg(figure),
                  alt=f"Scatter plot of {len(meta)} images on the first two principal components of "
                      f"{context.backbone} embeddings, coloured by class and shaped by subtype.",
                  caption="Each point is one image; nearby points have similar embeddings.")


@hookimpl
def register_analyses(register):
    """Register ``pca``."""
    register(Analysis(name="pca", run=pca, needs=Needs(min_samples=3), title="Principal components", order=10,
                      description="How many directions carry the embeddings' variance, and a 2-D map of the images."))
