"""``tk explain`` and ``tk predict``: run a classifier on image files, with Grad-CAM overlays."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.models.classifier import Classifier, weights_note
from toolkit.errors import TkError
from toolkit.extract import stain as stain_normalisation
from toolkit.ingest.images import read_image, read_size
from toolkit.plugin.registry import Registry, load_registry
from toolkit.models.gradcam import explanation_png, gradcam

DISPLAY_MAX = 700  # the longest side of the explanation's panels, in pixels (BreakHis: 700 x 460)


@dataclass(frozen=True)
class Prediction:
    """One image's predicted class, its probability and the model's latency."""

    image: Path
    label: str
    probability: float
    latency_ms: float
    overlay: Path | None = None
    weights_kind: str = "unknown"

    @property
    def note(self) -> str | None:
        """A warning to show with the prediction (random weights), else None."""
        return weights_note(self.weights_kind)


def explain(classifier: Classifier, image: Path, out_dir: Path) -> Prediction:
    """Write ``<out>/<image stem>.gradcam-<backbone>.png`` (the image at its own aspect ratio beside
    its Grad-CAM overlay, with a colour bar and the predicted class) and return the prediction."""
    layer = classifier.backbone.gradcam_layer
    if not layer:
        raise TkError(f"backbone {classifier.backbone.name} declares no gradcam_layer; Grad-CAM needs one")
    pixels = classifier.read(image)
    started = time.perf_counter()
    heatmaps, probabilities = gradcam(classifier.model, layer, pixels[None], classifier.backbone.preprocess)
    latency = (time.perf_counter() - started) * 1000
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{image.stem}.gradcam-{classifier.backbone.name}.png"
    best = int(probabilities[0].argmax())
    prediction = Prediction(image, classifier.head.classes[best], float(probabilities[0, best]), latency, target,
                            classifier.weights_kind)
    width, height = read_size(image)
    scale = min(1.0, DISPLAY_MAX / max(width, height))
    shown = read_image(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    title = f"{classifier.backbone.name}: {prediction.label} ({prediction.probability:.0%})"
    if prediction.note:
        title += " — RANDOM weights, not evidence"
    target.write_bytes(explanation_png(shown, heatmaps[0], title, caption(prediction, classifier.backbone.name)))
    return prediction


def caption(prediction: Prediction, backbone: str) -> str:
    """The overlay PNG's caption: what it shows, and the weights warning when there is one."""
    text = f"Grad-CAM of {backbone} for {prediction.label} (probability {prediction.probability:.3f})"
    return f"{text}. Warning: {prediction.note}" if prediction.note else text


def load_exported(model: Path) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]], dict[str, Any]]:
    """An exported classifier (``.tflite`` file or SavedModel folder) and its metadata JSON."""
    if model.suffix == ".tflite" and model.is_file():
        from toolkit.extract.litert import LiteModel

        return LiteModel(model), _metadata(model.with_suffix(".json"))
    if (model / "saved_model.pb").is_file():
        import tensorflow as tf

        signature = tf.saved_model.load(str(model)).signatures["serving_default"]
        run = lambda pixels: {k: v.numpy() for k, v in signature(images=tf.constant(pixels, tf.float32)).items()}  # noqa: E731
        return run, _metadata(model.parent / f"{model.parent.name}.json")
    raise TkError(f"{model}: not a .tflite file or a SavedModel folder (from `tk export`)")


def _metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TkError(f"{path} is missing: it holds the class names; export the model again with `tk export`")
    return json.loads(path.read_text())


def predict(model: Path, images: list[Path], registry: Registry | None = None) -> list[Prediction]:
    """Class, probability and latency of an exported classifier on each image, each stain-normalised
    first when the model's run normalised its images (its method from ``registry``)."""
    run, meta = load_exported(model)
    size = (meta["input"]["height"], meta["input"]["width"])
    stain = stain_normalisation.restore(meta["stain"], registry or load_registry()) if meta.get("stain") else None
    predictions = []
    for image in images:
        pixels = stain_normalisation.read_normalised(image, size, stain, meta["input"].get("resize", "stretch"))[None]
        started = time.perf_counter()
        probabilities = run(pixels)["probabilities"][0]
        latency = (time.perf_counter() - started) * 1000
        best = int(np.argmax(probabilities))
        predictions.append(Prediction(image, meta["classes"][best], float(probabilities[best]), latency,
                                      weights_kind=meta.get("weights_kind", "unknown")))
    return predictions
