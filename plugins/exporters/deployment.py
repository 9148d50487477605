"""What the TFLite and SavedModel exporters share: the run's classifiers, sample images from the
store, and parity measured against the Keras model and stored (the SavedModel writer and the TFLite
converter live in ``toolkit.extract.conversion``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolkit.models.classifier import Classifier, load_classifier
from toolkit.extract.conversion import calibration_sample
from toolkit.plugin.types import ExportContext
from toolkit.extract.litert import median_ms
from toolkit.extract.parity import parity

N_CALIBRATION = 64
N_PARITY = 32
BATCH = 32


def classifiers(context: ExportContext) -> Iterator[Classifier]:
    """One classifier per backbone named in ``settings["backbones"]`` (default: all of the run's)."""
    names = context.settings.get("backbones") or [
        r[0] for r in context.store.con.execute(
            "SELECT backbone FROM run_backbones WHERE run_id = ? AND status = 'ok' ORDER BY backbone",
            [context.run_id]).fetchall()]
    for name in names:
        yield load_classifier(context.store, context.registry, name, context.run_id, int(context.settings.get("seed", 0)))


def sample_pixels(context: ExportContext, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out images of the run (distinct contents, shuffled), raw RGB uint8.

    Held-out images are never used for calibration unless the run has too few images.
    """
    rows = context.store.con.execute("""SELECT any_value(i.path) FROM run_images r JOIN images i USING (image_id)
                                        WHERE r.run_id = ? GROUP BY i.sha256 ORDER BY i.sha256""",
                                     [context.run_id]).fetchall()
    return calibration_sample([r[0] for r in rows], size, seed, N_CALIBRATION, N_PARITY)


def measure(context: ExportContext, classifier: Classifier, exported: Any, fmt: str, path: Path,
            input_type: str, held_out: np.ndarray) -> dict[str, Any]:
    """Parity and latency of ``exported`` (callable on pixels) against the Keras model; stored."""
    reference = classifier.predict(held_out)
    found = parity(reference, exported(held_out))
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
    context.store.con.execute("DELETE FROM export_parity WHERE run_id = ? AND backbone = ? AND format = ?",
                              [context.run_id, classifier.backbone.name, fmt])
    columns = ["run_id", "backbone", *row]
    context.store.con.execute(f"INSERT INTO export_parity ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                              [context.run_id, classifier.backbone.name, *row.values()])
    return row


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path
