"""What the TFLite and SavedModel exporters share: the run's classifiers, sample images from the
store, and parity measured against the Keras model and stored in ``export_parity``, whose rows the
``deployment`` report section shows (tk writes the SavedModel and converts it:
``toolkit.write_savedmodel``, ``toolkit.convert_to_tflite``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolkit import (Classifier, ExportContext, TableSpec, calibration_sample, console, load_classifier, median_ms,
                     parity_warning, prediction_parity)

PARITY = TableSpec("export_parity", {
    "run_id": "VARCHAR", "backbone": "VARCHAR", "format": "VARCHAR", "path": "VARCHAR", "input_type": "VARCHAR",
    "size_bytes": "BIGINT", "latency_single_ms": "DOUBLE", "latency_batch32_ms": "DOUBLE",
    "keras_latency_single_ms": "DOUBLE", "keras_latency_batch32_ms": "DOUBLE", "centred_cosine_mean": "DOUBLE",
    "centred_cosine_min": "DOUBLE", "similarity_rank_corr": "DOUBLE", "prediction_agreement": "DOUBLE",
    "max_probability_diff": "DOUBLE", "n_images": "INTEGER", "created_at": "TIMESTAMP DEFAULT current_timestamp"},
    summary=("format", "input_type", "size_bytes", "latency_single_ms", "centred_cosine_mean", "prediction_agreement"))
"""Size, latency and parity with the Keras model of every exported model, per run, backbone and format."""
EXPORT_PARITY_ADVICE = ("its predictions may not match the Keras model's: check them before you deploy it, or "
                        "export tflite or tflite-fp16")
N_CALIBRATION = 64
N_PARITY = 32
BATCH = 32


def classifiers(context: ExportContext) -> Iterator[Classifier]:
    """One classifier per backbone named in ``context.settings.backbones`` (default: all of the run's)."""
    names = context.settings.backbones or [
        row["backbone"] for row in context.store.runs.run_backbones(context.run_id, ok_only=True)]
    for name in names:
        yield load_classifier(context.store, context.registry, name, context.run_id, context.settings.seed)


def sample_pixels(context: ExportContext, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out images of the run (distinct contents, shuffled), raw RGB uint8.

    Held-out images are never used for calibration unless the run has too few images.
    """
    return calibration_sample(context.store.images.run_contents(context.run_id), size, seed, N_CALIBRATION, N_PARITY)


def measure(context: ExportContext, classifier: Classifier, exported: Any, fmt: str, path: Path,
            input_type: str, held_out: np.ndarray) -> dict[str, Any]:
    """Parity and latency of ``exported`` (callable on pixels) against the Keras model, handed back
    through ``context`` for core to store."""
    reference = classifier.predict(held_out)
    found = prediction_parity(reference, exported(held_out))
    batch = np.resize(held_out, (BATCH, *held_out.shape[1:]))
    row = {
        "format": fmt, "path": path.name, "input_type": input_type,
        "size_bytes": _size(path),
        "latency_single_ms": median_ms(lambda: exported(held_out[:1]), 10),
        "latency_batch32_ms": median_ms(lambda: exported(batch), 3),
        "keras_latency_single_ms": median_ms(lambda: classifier.predict(held_out[:1]), 10),
        "keras_latency_batch32_ms": median_ms(lambda: classifier.predict(batch), 3),
        **found,
    }
    key = {"run_id": context.run_id, "backbone": classifier.backbone.name, "format": fmt}
    context.replace_rows(PARITY, [{**key, **row}], where=key)
    far = export_parity_warning(classifier.backbone.name, fmt, found)
    if far:
        console.warn(far)
    return row


def export_parity_warning(backbone: str, fmt: str, found: dict[str, Any]) -> str | None:
    """The warning ``tk run --precision`` gives below the same parity, for an exported model."""
    return parity_warning(backbone, fmt, found, reference="the Keras model", advice=EXPORT_PARITY_ADVICE)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path
