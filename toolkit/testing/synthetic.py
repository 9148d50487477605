"""The kit's synthetic run: labelled images from a few patients, two clinical variables and two
backbones whose embeddings carry a class signal, written into a store through the store's own API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np

from toolkit import __version__
from toolkit.ingest.clinical import ClinicalColumn, ClinicalData
from toolkit.ingest.scan import ScannedImage
from toolkit.ingest.sources import ImageRecord
from toolkit.store import EmbeddingSet, Store

KIT_RUN_ID = "kit-run"
KIT_BACKBONES = {"alpha": 8, "beta": 12}
KIT_LABELS = ("benign", "malignant")
KIT_IMAGES = 24
KIT_SEED = 7
MAGNIFICATIONS = (40, 100, 200, 400)
PATIENTS_PER_LABEL = 3


@dataclass(frozen=True)
class SyntheticRun:
    """A run written into ``store``: its id and the embedding set of every backbone."""

    store: Store
    run_id: str
    sets: dict[str, EmbeddingSet]


def _kit_images(n_images: int, labels: tuple[str, ...]) -> list[ScannedImage]:
    images = []
    for i in range(n_images):
        label = labels[i % len(labels)] if labels else None
        rank = i // max(len(labels), 1)
        record = ImageRecord(
            path=Path(f"/synthetic/image_{i:03d}.png"), relpath=f"image_{i:03d}.png", source="synthetic",
            label=label, subtype=f"{label}_{'ab'[rank % 2]}" if label else None,
            magnification=MAGNIFICATIONS[i % len(MAGNIFICATIONS)] if label else None,
            patient_id=f"{label[0]}{rank % PATIENTS_PER_LABEL}" if label else None)
        sha = hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()
        images.append(ScannedImage(record, sha, size_bytes=1, mtime_ns=0, width=32, height=32))
    return images


def _kit_vectors(images: list[ScannedImage], dim: int, seed: int) -> np.ndarray:
    """Gaussian noise plus a shift along the first two features that grows with the label's rank."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(images), dim)).astype(np.float32)
    ranks = {label: rank for rank, label in enumerate(sorted({i.record.label or "" for i in images}))}
    vectors[:, :2] += np.array([[1.5 * ranks[i.record.label or ""]] for i in images], dtype=np.float32)
    return vectors


def _kit_clinical(images: list[ScannedImage]) -> ClinicalData:
    """Two patient-level clinical variables, so that analyses meet ``context.clinical_columns``: a
    numeric ``age`` (patients in order: 40, 45, 50, ...) and a categorical ``grade`` (``high`` for the
    last label's patients, ``low`` for the others). None for unlabelled images (they have no patients)."""
    patients = sorted({i.record.patient_id for i in images if i.record.patient_id is not None})
    if not patients:
        return ClinicalData([], {}, [])
    last = sorted({i.record.label for i in images if i.record.label})[-1]
    grade = {i.record.patient_id: "high" if i.record.label == last else "low" for i in images if i.record.patient_id}
    return ClinicalData([ClinicalColumn("age", "numeric", "patient", "synthetic"),
                         ClinicalColumn("grade", "categorical", "patient", "synthetic")],
                        {"age": {p: 40.0 + 5 * k for k, p in enumerate(patients)}, "grade": grade}, [])


def synthetic_run(store: Store, n_images: int = KIT_IMAGES, backbones: Mapping[str, int] = KIT_BACKBONES,
                  labels: tuple[str, ...] = KIT_LABELS, seed: int = KIT_SEED) -> SyntheticRun:
    """Write a finished run of ``n_images`` synthetic images into ``store``.

    ``labels=()`` gives unlabelled images (no label, subtype, magnification or patient id).
    """
    images = _kit_images(n_images, labels)
    shas = [image.sha256 for image in images]
    sets = {name: EmbeddingSet(name, f"random-seed{seed}", dim) for name, dim in backbones.items()}
    store.runs.start_run(KIT_RUN_ID, "toolkit.testing", {"seed": seed}, {"tk": __version__})
    for offset, embedding_set in enumerate(sets.values()):
        store.embeddings.ensure_set(embedding_set, "random", None, None)
    store.embeddings.write_batch(KIT_RUN_ID, images, {s: (shas, _kit_vectors(images, s.dim, seed + offset))
                                          for offset, s in enumerate(sets.values())})
    for embedding_set in sets.values():
        store.embeddings.point_view(embedding_set)
        store.runs.record_backbone(KIT_RUN_ID, embedding_set.backbone, table_name=embedding_set.table,
                              weights_id=embedding_set.weights_id, weights_kind="random", dim=embedding_set.dim,
                              n_embedded=n_images, n_reused=0, seconds=0.0, status="ok")
    store.clinical.record_clinical(KIT_RUN_ID, _kit_clinical(images))
    store.runs.update_run(KIT_RUN_ID, status="ok", n_images=n_images, n_skipped=0, source="synthetic",
                     data_root="/synthetic", finished_at=datetime.now(timezone.utc).replace(tzinfo=None))
    return SyntheticRun(store, KIT_RUN_ID, sets)


