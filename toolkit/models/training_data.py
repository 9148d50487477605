"""The images ``tk train`` learns from: decoded once, labelled, split by patient into training and
held-out images, and balanced by class weights or oversampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit import console
from toolkit.analysis.stats import group_codes
from toolkit.errors import TkError
from toolkit.lazy import lazy_import

pd = lazy_import("pandas")

if TYPE_CHECKING:
    from toolkit.ingest.scan import ScannedImage
    from toolkit.models.training import TrainSettings


@dataclass(frozen=True)
class TrainingData:
    """Decoded images with labels and patients, and the patient-grouped validation mask."""

    pixels: np.ndarray  # (n, h, w, 3) uint8
    y: np.ndarray  # class codes
    classes: list[str]
    patients: np.ndarray  # patient codes
    val: np.ndarray  # bool mask: images of held-out patients
    dataset_fingerprint: str = ""  # as tk run records it: which image set this was

    @property
    def minority(self) -> int:
        """The class with the fewest training images."""
        return int(np.argmin(np.bincount(self.y[~self.val], minlength=len(self.classes))))


def patient_split(y: np.ndarray, patients: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Mask of validation images: whole patients, stratified by class, about ``val_fraction`` of them."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = pd.DataFrame({"y": y, "p": patients}).drop_duplicates().groupby("y").size()
    folds = int(min(round(1 / val_fraction), per_class.min()))
    if folds < 2 or len(per_class) < 2:
        raise TkError("a patient-grouped split needs at least 2 classes with at least 2 patients each")
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    _, val = next(splitter.split(np.zeros(len(y)), y, patients))
    mask = np.zeros(len(y), dtype=bool)
    mask[val] = True
    return mask


def load_training_data(settings: TrainSettings, size: tuple[int, int]) -> TrainingData:
    """Find, check and decode the images of ``settings.data`` (the demo when None) at ``size``."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.ingest.images import UnreadableImage, load_rgb, read_verified
    from toolkit.ingest.scan import scan
    from toolkit.ingest.sources import find_images
    from toolkit.run.settings import dataset_fingerprint

    data = settings.data
    if data is None:
        from toolkit.ingest.demo import demo_dataset

        data = demo_dataset()
        console.info(f"no DATA given: using the bundled demo dataset ({data})")
    kind, root, records, skipped = find_images(Path(data), settings.source)
    images, unreadable = scan(records, {})
    for item in [*skipped, *unreadable]:
        console.warn(f"{item.relpath}: {item.reason} — skipped")
    if any(i.record.label is None or i.record.patient_id is None for i in images):
        raise TkError("training needs a label and a patient id for every image (patient-grouped validation); "
                      "use a BreakHis tree or a manifest with label and patient_id columns")
    console.info(f"decoding {len(images)} images ({kind}) from {root}")

    def decode(image: ScannedImage) -> np.ndarray | None:  # the bytes that were hashed, as extraction does
        try:
            return load_rgb(read_verified(image.record.path, image.sha256), size)
        except UnreadableImage as exc:
            console.warn(f"{image.record.relpath}: {exc} — skipped")
            return None

    with ThreadPoolExecutor(4) as pool:
        decoded = list(pool.map(decode, images))
    images = [image for image, array in zip(images, decoded) if array is not None]
    if not images:
        raise TkError(f"no image of {root} could be decoded; check the files and run again")
    pixels = np.stack([array for array in decoded if array is not None])
    y, classes = group_codes(pd.Series([i.record.label for i in images]))
    patients, _ = group_codes(pd.Series([i.record.patient_id for i in images]))
    val = patient_split(y, patients, settings.val_fraction, settings.seed)
    return TrainingData(pixels, y, [str(c) for c in classes], patients, val, dataset_fingerprint(images))


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (n_classes * n_c)`` per class: every class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return len(y) / (n_classes * np.maximum(counts, 1))


def oversampled(indices: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """``indices`` with every class drawn (with replacement) up to the largest class's count."""
    rng = np.random.default_rng(seed)
    by_class = [indices[y[indices] == c] for c in np.unique(y[indices])]
    target = max(len(members) for members in by_class)
    return np.concatenate([np.concatenate([members, rng.choice(members, target - len(members))])
                           for members in by_class])
