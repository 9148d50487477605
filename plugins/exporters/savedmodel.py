"""SavedModel for TF Serving: ``<out>/<backbone>_classifier/<version>/`` with a ``serving_default``
signature taking float32 RGB images (0..255) and returning ``embedding`` and ``probabilities``."""

from __future__ import annotations

from pathlib import Path

from toolkit import ExportContext, Exporter, hookimpl, write_savedmodel
from toolkit.plugins.exporters.parity import PARITY, classifiers, measure, sample_pixels, write_json


def next_version(model_dir: Path) -> int:
    """TF Serving loads the highest numeric version folder; a new export gets the next number."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_savedmodel(context: ExportContext, out_dir: Path) -> list[Path]:
    """One versioned SavedModel per backbone, plus ``<backbone>_classifier.json`` with classes and parity."""
    import tensorflow as tf

    written = []
    for classifier in classifiers(context):
        model_dir = out_dir / f"{classifier.backbone.name}_classifier"
        target = model_dir / str(next_version(model_dir))
        write_savedmodel(classifier.backbone, classifier.model, target)
        signature = tf.saved_model.load(str(target)).signatures["serving_default"]
        _, held_out = sample_pixels(context, classifier.backbone.input_size)
        serve = lambda pixels: {k: v.numpy() for k, v in signature(images=tf.constant(pixels, tf.float32)).items()}  # noqa: E731
        row = measure(context, classifier, serve, "savedmodel", target, "float32 RGB 0..255", held_out)
        written += [target, write_json(model_dir / f"{classifier.backbone.name}_classifier.json",
                                       {**classifier.metadata(), "version": int(target.name), "parity": row})]
    return written


@hookimpl
def register_exporters(register):
    """Register ``savedmodel``."""
    register(Exporter(name="savedmodel", export=export_savedmodel,
                      description="SavedModel classifier in the TF Serving layout, with parity numbers",
                      tables=(PARITY,)))
