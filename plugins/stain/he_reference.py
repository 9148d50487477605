"""The H&E reference both built-in stain normalisers aim at: Macenko's default stain matrix and
concentrations (those of the widely used reference implementation, github.com/schaugf/HEnorm_python),
and synthetic tiles stained with it (Reinhard's default target is the colour statistics of one)."""

from __future__ import annotations

import numpy as np

IO = 240.0  # transmitted light level of the reference implementation: OD = -log((I + 1) / IO)
HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MAX_C_REF = np.array([1.9705, 1.0308])


def synthetic_tile(matrix: np.ndarray, max_c: np.ndarray, size: tuple[int, int] = (64, 64),
                   seed: int = 0) -> np.ndarray:
    """An H&E-like uint8 tile built from a stain matrix ``(3, 2)``: nuclei (mostly H) and stroma
    (mostly E) on some background, with concentrations up to ``max_c``. For tests and the default
    Reinhard target."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    nuclei = np.zeros((height, width))
    for _ in range(max(3, height * width // 400)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 5)
        nuclei = np.maximum(nuclei, np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1))
    stroma = np.clip(0.6 + 0.4 * np.sin(xx / 5.0 + rng.uniform(0, 6)) * np.cos(yy / 7.0), 0, 1)
    h = max_c[0] * np.clip(nuclei + 0.03 * rng.random((height, width)), 0, 1)
    e = max_c[1] * np.clip(stroma * (1 - nuclei) ** 2 + 0.03 * rng.random((height, width)), 0, 1)
    od = np.einsum("ck,hwk->hwc", np.asarray(matrix, float), np.stack([h, e], axis=-1))
    return np.clip(IO * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)
