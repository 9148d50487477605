"""Reinhard colour normalisation (Reinhard et al., "Color transfer between images", 2001), as used
for H&E: each image's per-channel mean and standard deviation in CIE L*a*b* (sRGB, D65) are matched
to a target's. Vectorised over a batch.

The default target is the L*a*b* statistics of a synthetic tile built from the default Macenko
reference (``HE_REF`` and ``MAX_C_REF`` of ``he_reference``), so the two built-ins aim at
the same colours without an image shipped with tk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit import StainNormaliser, hookimpl
from toolkit.plugins.stain.he_reference import HE_REF, MAX_C_REF, synthetic_tile

MIN_STD = 1e-3  # a channel flatter than this (a blank tile) cannot be rescaled: left unchanged
RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
WHITE = np.array([0.950456, 1.0, 1.088754])  # D65


def _srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb > 0.04045, ((srgb + 0.055) / 1.055) ** 2.4, srgb / 12.92)


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    return np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


LINEAR_OF_BYTE = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)  # uint8 input: a table look-up
GAMMA_STEPS = 1 << 16
SRGB_OF_LINEAR = (255.0 * _linear_to_srgb(np.arange(GAMMA_STEPS) / (GAMMA_STEPS - 1))).astype(np.float32)


def _mix(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``matrix @ pixel`` for every pixel of ``(..., 3)``, in float32 (an element-wise sum: a 3 x 3
    matrix product through BLAS was 10x slower here, on a busy machine)."""
    m = matrix.astype(np.float32)
    return np.stack([pixels[..., 0] * m[i, 0] + pixels[..., 1] * m[i, 1] + pixels[..., 2] * m[i, 2]
                     for i in range(3)], axis=-1)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB in 0..255 (any shape ``(..., 3)``) -> CIE L*a*b* (float32)."""
    rgb = np.asarray(rgb)
    linear = (LINEAR_OF_BYTE[rgb] if rgb.dtype == np.uint8
              else _srgb_to_linear(rgb.astype(np.float64) / 255.0).astype(np.float32))
    xyz = _mix(linear, RGB_TO_XYZ / WHITE[:, None])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / np.float32(3 * (6 / 29) ** 2) + np.float32(4 / 29))
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* -> RGB in 0..255 (float32, clipped to the gamut; the gamma curve is tabulated in
    65,536 steps, within 0.01 of a grey level)."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, np.float32(3 * (6 / 29) ** 2) * (f - np.float32(4 / 29)))
    linear = np.clip(_mix(xyz, np.linalg.inv(RGB_TO_XYZ) * WHITE), 0, 1)
    return SRGB_OF_LINEAR[np.rint(linear * (GAMMA_STEPS - 1)).astype(np.int32)]


def lab_statistics(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image L*a*b* means and standard deviations, each ``(n, 3)``."""
    lab = rgb_to_lab(np.asarray(batch).reshape(len(batch), -1, 3))
    return lab.mean(axis=1), lab.std(axis=1)


def fit(reference: np.ndarray) -> dict[str, Any]:
    """The L*a*b* mean and standard deviation of a reference image ``(h, w, 3)``."""
    mean, std = lab_statistics(np.asarray(reference)[None])
    return {"mean": mean[0].round(6).tolist(), "std": std[0].round(6).tolist()}


def apply(batch: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """Match each image's L*a*b* statistics to ``state``; flat images come back unchanged."""
    batch = np.asarray(batch)
    lab = rgb_to_lab(batch.reshape(len(batch), -1, 3))
    mean, std = lab.mean(axis=1, keepdims=True), lab.std(axis=1, keepdims=True)
    usable = (std > MIN_STD).all(axis=(1, 2))
    scaled = (lab - mean) / np.where(std > MIN_STD, std, 1.0) * np.asarray(state["std"]) + np.asarray(state["mean"])
    out = lab_to_rgb(scaled).reshape(batch.shape)
    return np.where(usable[:, None, None, None], out, batch.astype(np.float32))


def default_state() -> dict[str, Any]:
    """The target statistics of the synthetic reference tile (see the module docstring)."""
    return fit(synthetic_tile(HE_REF, MAX_C_REF, size=(128, 128), seed=0))


@hookimpl
def register_stain_normalisers(register):
    register(StainNormaliser(name="reinhard", fit=fit, apply=apply, default_state=default_state(),
                             description="Reinhard et al. 2001: L*a*b* mean and standard deviation matched to a target"))
