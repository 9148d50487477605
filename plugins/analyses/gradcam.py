"""Grad-CAM gallery: where the classifier looks, for its most confident right and wrong calls.

Images are chosen from the probe's patient-held-out predictions (label target): per true class, the
two most confident correct and the two most confident wrong. Heatmaps come from the deployable
classifier (backbone + probe head trained on all images), explaining the held-out predicted class.
"""

from __future__ import annotations

import io

import numpy as np

from toolkit import Analysis, AnalysisContext, Figure, Needs, SkipAnalysis, Table, hookimpl, lazy_import

pd = lazy_import("pandas")

PER_KIND = 2


def choose(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per true class, the PER_KIND most confident correct and wrong predictions (image_id, y_true,
    y_pred, probability, correct)."""
    chosen = predictions[predictions["class"] == predictions["y_pred"]].copy()
    chosen["correct"] = chosen["y_true"] == chosen["y_pred"]
    chosen = chosen.sort_values(["y_true", "correct", "probability", "image_id"], ascending=[True, False, False, True])
    return chosen.groupby(["y_true", "correct"], sort=False).head(PER_KIND).reset_index(drop=True)


def gradcam_gallery(context: AnalysisContext) -> list:
    """Table ``main`` (image_id, y_true, y_pred, probability, correct, peak_row, peak_col: where the
    heatmap peaks, as a fraction of the image) and a gallery figure of the overlays."""
    from toolkit import gradcam_heatmaps, gradcam_overlay_png, load_classifier

    predictions = context.results("probe", "predictions")
    if not predictions.empty:
        predictions = predictions[(predictions["target"] == "label") & (predictions["split"] == "patient")]
    if predictions.empty:
        raise SkipAnalysis("the probe made no patient-held-out predictions for label in this run")
    predictions = predictions[["image_id", "y_true", "y_pred", "class", "probability"]].reset_index(drop=True)
    registered = context.registry.backbones.get(context.backbone or "") if context.registry else None
    if registered is not None and not registered.gradcam_layer:  # before building a model for nothing
        raise SkipAnalysis(f"backbone {context.backbone} declares no gradcam_layer (Grad-CAM needs a convolutional layer)")
    classifier = load_classifier(context.store, context.registry, context.backbone, context.run_id, context.seed)
    layer = classifier.backbone.gradcam_layer
    if not layer:
        raise SkipAnalysis(f"backbone {context.backbone} declares no gradcam_layer")
    chosen = choose(predictions)
    paths = context.store.images.image_paths(chosen["image_id"])
    pixels = np.stack([classifier.read(paths[i]) for i in chosen["image_id"]])  # stain-normalised as the run's
    class_index = [classifier.head.classes.index(label) for label in chosen["y_pred"]]
    heatmaps, _ = gradcam_heatmaps(classifier.model, layer, pixels, classifier.backbone.preprocess, class_index)
    peaks = [np.unravel_index(np.argmax(h), h.shape) for h in heatmaps]
    chosen["peak_row"] = [r / heatmaps.shape[1] for r, _ in peaks]
    chosen["peak_col"] = [c / heatmaps.shape[2] for _, c in peaks]
    overlays = [gradcam_overlay_png(p, h) for p, h in zip(pixels, heatmaps)]
    return [Table("main", chosen, "Images shown in the Grad-CAM gallery"),
            _gallery(context.backbone, chosen, overlays)]


def _gallery(backbone: str, chosen: pd.DataFrame, overlays: list[bytes]) -> Figure:
    from PIL import Image

    from toolkit import new_figure

    columns = max(int(chosen.groupby("y_true").size().max()), 1)
    rows = chosen["y_true"].nunique()
    figure, axes = new_figure(2.1 * columns, 2.4 * rows)
    figure.clf()
    grid = figure.subplots(rows, columns, squeeze=False)
    for axis in grid.ravel():
        axis.axis("off")
    for r, (truth, group) in enumerate(chosen.groupby("y_true", sort=True)):
        for c, (_, row) in enumerate(group.iterrows()):
            axis = grid[r, c]
            axis.imshow(Image.open(io.BytesIO(overlays[row.name])))
            verdict = "correct" if row["correct"] else "WRONG"
            axis.set_title(f"true {truth}\n{verdict}: {row['y_pred']} {row['probability']:.0%}", fontsize=7,
                           color="black" if row["correct"] else "#B00020")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return Figure("gallery", buffer.getvalue(),
                  alt=f"Grad-CAM overlays for {len(chosen)} images on {backbone}: per true class, the most "
                      "confident correct and wrong held-out predictions; brighter yellow marks regions that "
                      "raised the predicted class.",
                  caption="Grad-CAM: yellow regions pushed the classifier towards the class it predicted. "
                          "Predictions are from patients held out of training.")


@hookimpl
def register_analyses(register):
    """Register ``gradcam``."""
    register(Analysis(name="gradcam", run=gradcam_gallery,
                      needs=Needs(labels=True, patients=True, min_samples=10, analyses=("probe",)), order=70,
                      title="Where the classifier looks (Grad-CAM)",
                      description="Grad-CAM overlays for the most confident right and wrong held-out predictions."))
