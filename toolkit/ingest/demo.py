"""The bundled demo dataset: synthetic H&E-like tiles in the exact BreakHis layout.

Benign tiles show regular glands lined by small, evenly spaced nuclei in pink stroma; malignant
tiles show crowded, enlarged, irregular and darker nuclei with few glands. Subtypes add their own
texture (mucin pools, single-file cells, papillae, ...). The difference is real and visible, so the
statistics have something true to find; nothing about it is clinical data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toolkit.ingest.sources import BREAKHIS_SUBTYPES

DEMO_VERSION = "v1"
WIDTH, HEIGHT = 700, 460
MAGNIFICATIONS = (40, 100, 200, 400)
PATIENTS_PER_SUBTYPE = 2
IMAGES_PER_MAGNIFICATION = 3


def cache_dir() -> Path:
    """Where generated data is kept: ``$TK_CACHE_DIR`` or ``~/.cache/tk``."""
    base = os.environ.get("TK_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "tk")
    return Path(base).expanduser()


def synthetic_tile(rng: np.random.Generator, malignant: bool, subtype: str, magnification: int) -> Image.Image:
    """One 700x460 H&E-like tile of the given class, subtype and magnification."""
    scale = {40: 0.6, 100: 0.8, 200: 1.0, 400: 1.4}[magnification]
    stroma = np.array([236, 188, 206]) + rng.normal(0, 6, 3)
    base = np.ones((HEIGHT, WIDTH, 3)) * stroma + rng.normal(0, 9, (HEIGHT, WIDTH, 1))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(40 / scale)):  # collagen fibres
        x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        dx, dy = rng.normal(0, 60 * scale, 2)
        draw.line([(x, y), (x + dx, y + dy)], fill=(218, 150, 180), width=int(2 * scale) + 1)
    if subtype == "mucinous_carcinoma":
        for _ in range(4):
            cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(50, 110) * scale
            draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=(200, 210, 230))
    n_glands = 0 if malignant else int(rng.integers(4, 8) / scale)
    if subtype in ("adenosis", "tubular_adenoma"):
        n_glands *= 2
    for _ in range(n_glands):
        cx, cy = rng.uniform(40, WIDTH - 40), rng.uniform(40, HEIGHT - 40)
        r = rng.uniform(25, 45) * scale * (0.6 if subtype == "tubular_adenoma" else 1.0)
        draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=(250, 242, 246))
        for angle in np.linspace(0, 2 * np.pi, int(r / 3), endpoint=False):  # regular lining
            nx, ny = cx + (r + 4) * np.cos(angle), cy + (r * 0.8 + 4) * np.sin(angle)
            nr = 3.5 * scale
            draw.ellipse([nx - nr, ny - nr, nx + nr, ny + nr], fill=(110, 70, 150))
    n_nuclei = int((900 if malignant else 220) * (0.7 if subtype == "mucinous_carcinoma" else 1.0) / scale)
    for _ in range(n_nuclei):
        if subtype == "lobular_carcinoma" and rng.random() < 0.6:  # single-file rows
            row = rng.integers(0, 12)
            x, y = rng.uniform(0, WIDTH), (row + 0.5) * HEIGHT / 12 + rng.normal(0, 3)
        elif subtype == "papillary_carcinoma" and rng.random() < 0.5:  # along finger-like papillae
            finger = rng.integers(0, 5)
            t = rng.uniform(0, 1)
            x, y = (finger + 0.5) * WIDTH / 5 + 18 * np.sin(6 * t), t * HEIGHT
        else:
            x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        if malignant:
            rx, ry = rng.uniform(4, 9, 2) * scale
            shade = rng.uniform(40, 90)
            colour = (int(shade), int(shade * 0.5), int(shade * 1.6))
        else:
            rx = ry = rng.uniform(2.5, 3.5) * scale
            colour = (120, 80, 160)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
    if subtype == "phyllodes_tumor":
        for _ in range(3):  # leaf-like clefts
            x0, y0 = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            draw.arc([x0, y0, x0 + 200 * scale, y0 + 80 * scale], 0, 180, fill=(252, 246, 248), width=6)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def _write(path: Path, seeds: list[int], malignant: bool, subtype: str, magnification: int) -> None:
    synthetic_tile(np.random.default_rng(seeds), malignant, subtype, magnification).save(path, compress_level=1)


def generate(root: Path, seed: int = 0) -> Path:
    """Write the demo tree under ``root`` (BreakHis layout); returns the dataset folder."""
    dataset = root / "BreaKHis_v1" / "histology_slides" / "breast"
    jobs = []
    for s_index, (code, (label, subtype)) in enumerate(sorted(BREAKHIS_SUBTYPES.items())):
        cls = "B" if label == "benign" else "M"
        for p in range(PATIENTS_PER_SUBTYPE):
            patient = f"{14 + p}-{1000 + 97 * s_index + p}"
            patient_dir = dataset / label / "SOB" / subtype / f"SOB_{cls}_{code}_{patient}"
            for magnification in MAGNIFICATIONS:
                folder = patient_dir / f"{magnification}X"
                folder.mkdir(parents=True, exist_ok=True)
                for seq in range(1, IMAGES_PER_MAGNIFICATION + 1):
                    name = f"SOB_{cls}_{code}-{patient}-{magnification}-{seq:03d}.png"
                    jobs.append((folder / name, [seed, s_index, p, magnification, seq], label == "malignant",
                                 subtype, magnification))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: _write(*job), jobs))
    return dataset


def demo_dataset() -> Path:
    """The demo dataset folder, generated on first use into the cache (about 200 images)."""
    target = cache_dir() / f"demo-{DEMO_VERSION}"
    dataset = target / "BreaKHis_v1" / "histology_slides" / "breast"
    if (target / ".complete").exists():
        return dataset
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="demo-", dir=target.parent))
    generate(staging)
    (staging / ".complete").write_text(DEMO_VERSION)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return dataset
