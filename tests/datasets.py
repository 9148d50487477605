"""Small generated datasets in BreakHis' exact folder and file-name layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUBTYPES = {
    "A": ("benign", "adenosis"), "F": ("benign", "fibroadenoma"),
    "DC": ("malignant", "ductal_carcinoma"), "LC": ("malignant", "lobular_carcinoma"),
}


def tile(rng: np.random.Generator, malignant: bool, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small pink tile with purple dots; malignant tiles are darker with more, larger dots."""
    width, height = size
    base = np.ones((height, width, 3)) * np.array([236, 190, 206]) + rng.normal(0, 8, (height, width, 1))
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(30 if malignant else 8):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(3, 6) if malignant else rng.uniform(1.5, 2.5)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
        base[mask] = [70, 35, 110] if malignant else [125, 85, 165]
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def image_path(root: Path, code: str, patient: str, magnification: int, seq: int) -> Path:
    label, subtype = SUBTYPES[code]
    cls = "B" if label == "benign" else "M"
    folder = root / label / "SOB" / subtype / f"SOB_{cls}_{code}_{patient}" / f"{magnification}X"
    return folder / f"SOB_{cls}_{code}-{patient}-{magnification}-{seq:03d}.png"


def make_breakhis(root: Path, patients: int = 2, magnifications: tuple[int, ...] = (40, 400),
                  per_magnification: int = 2, seed: int = 0) -> list[Path]:
    """Write ``len(SUBTYPES) * patients * len(magnifications) * per_magnification`` PNGs; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for s_index, (code, (label, _)) in enumerate(SUBTYPES.items()):
        for p in range(patients):
            patient = f"14-{100 + 10 * s_index + p}"
            for magnification in magnifications:
                for seq in range(1, per_magnification + 1):
                    path = image_path(root, code, patient, magnification, seq)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tile(rng, label == "malignant").save(path)
                    paths.append(path)
    return paths


def make_class_folders(root: Path, patients: int = 3, per_patient: int = 2, seed: int = 0) -> Path:
    """``root/<class>/patient_<n>/<k>.png``: one folder per class, the patient only in the path."""
    rng = np.random.default_rng(seed)
    for label in ("benign", "malignant"):
        for patient in range(patients):
            folder = root / label / f"patient_{label[0]}{patient}"
            folder.mkdir(parents=True)
            for k in range(per_patient):
                tile(rng, label == "malignant").save(folder / f"{k}.png")
    return root
