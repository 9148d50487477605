"""Macenko stain normalisation (Macenko et al., "A method for normalizing histology slides for
quantitative analysis", ISBI 2009), vectorised over a batch.

Per image: optical density ``OD = -log((I + 1) / Io)`` with ``Io = 240`` (the transmitted light
level of the reference implementation the default constants come from); pixels with any channel's
OD below ``beta = 0.15`` (background) are dropped; the two leading eigenvectors of the remaining
ODs' covariance span the stain plane; the ``alpha = 1`` and ``99`` percentiles of the ODs' angles in
that plane give the haematoxylin and eosin vectors (H first: the one with the larger red OD); the
stain concentrations of every pixel are their least-squares solution; each concentration is scaled
so that its 99th percentile matches the reference's, and the image is rebuilt with the reference
stain matrix.

The default reference (``HE_REF``, ``MAX_C_REF``, in ``he_reference``) is the one of the widely used
reference implementation (github.com/schaugf/HEnorm_python, after Macenko's MATLAB code; also in
StainTools and torchstain).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from toolkit import StainNormaliser, hookimpl
from toolkit.plugins.stain.he_reference import HE_REF, IO, MAX_C_REF

ALPHA = 1.0
BETA = 0.15
MIN_TISSUE = 0.01  # at least this share of an image's pixels must be stained for a fit
MIN_ANGLE = np.deg2rad(2.0)  # two stain vectors closer than this: one stain, nothing to separate
FIT_PIXELS = 1 << 16  # fit on at most this many pixels per image (evenly strided); apply to all


def optical_density(batch: np.ndarray) -> np.ndarray:
    """``(n, h, w, 3)`` RGB in 0..255 -> ``(n, h*w, 3)`` optical densities (float32)."""
    pixels = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1, 3)
    return -np.log((pixels + 1.0) / IO)


def stain_matrices(od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(n, 3, 2)`` H&E stain matrices of a batch of ODs, and which images gave a usable one
    (enough stained pixels, two distinct stains, finite numbers)."""
    stride = max(1, od.shape[1] // FIT_PIXELS)
    sample = od[:, ::stride].astype(np.float64)
    tissue = (sample >= BETA).all(axis=2)
    count = tissue.sum(axis=1)
    weight = tissue[..., None].astype(np.float64)
    mean = (sample * weight).sum(axis=1) / np.maximum(count, 1)[:, None]
    centred = (sample - mean[:, None]) * weight
    covariance = np.einsum("npi,npj->nij", centred, centred) / np.maximum(count - 1, 1)[:, None, None]
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    plane = vectors[:, :, 1:3]  # (n, 3, 2)
    plane = plane * np.where(plane.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # ODs project to positive x
    projected = np.einsum("npc,nck->npk", sample, plane)
    angles = np.where(tissue, np.arctan2(projected[..., 1], projected[..., 0]), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'All-NaN slice': no tissue, left unchanged
        low, high = np.nanpercentile(angles, [ALPHA, 100 - ALPHA], axis=1)  # each (n,)
    low, high = np.nan_to_num(low), np.nan_to_num(high)
    v_low = np.einsum("nck,nk->nc", plane, np.stack([np.cos(low), np.sin(low)], axis=1))
    v_high = np.einsum("nck,nk->nc", plane, np.stack([np.cos(high), np.sin(high)], axis=1))
    h_first = (v_low[:, 0] > v_high[:, 0])[:, None]
    matrix = np.stack([np.where(h_first, v_low, v_high), np.where(h_first, v_high, v_low)], axis=2)
    usable = (count >= MIN_TISSUE * sample.shape[1]) & (count >= 3) & ((high - low) >= MIN_ANGLE)
    usable &= np.isfinite(matrix).all(axis=(1, 2))
    return matrix, usable


def concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(n, 2, pixels)`` least-squares stain concentrations of ODs ``(n, pixels, 3)`` for stain
    matrices ``(n, 3, 2)``."""
    inverse = np.linalg.pinv(matrix).astype(np.float32)  # (n, 2, 3)
    return np.einsum("nkc,npc->nkp", inverse, od)


def fit(reference: np.ndarray) -> dict[str, Any]:
    """The stain matrix and 99th-percentile concentrations of a reference image ``(h, w, 3)``."""
    od = optical_density(np.asarray(reference)[None])
    matrix, usable = stain_matrices(od)
    if not usable[0]:
        from toolkit import TkError

        raise TkError("the stain reference image shows too little tissue or a single stain for Macenko; "
                      "choose an H&E image with both stains")
    max_c = np.percentile(concentrations(od, matrix)[0], 99, axis=1)
    return {"stain_matrix": matrix[0].round(6).tolist(), "max_concentrations": max_c.round(6).tolist()}


def apply(batch: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """Normalise a batch ``(n, h, w, 3)`` to the reference in ``state``; images without a usable
    stain matrix (background only, a single stain) come back unchanged."""
    batch = np.asarray(batch)
    od = optical_density(batch)
    matrix, usable = stain_matrices(od)
    found = concentrations(od, matrix)
    max_c = np.percentile(found, 99, axis=2)  # (n, 2)
    usable &= (max_c > 1e-6).all(axis=1)
    scale = np.asarray(state["max_concentrations"], np.float32) / np.where(max_c > 1e-6, max_c, 1.0)
    reference = np.asarray(state["stain_matrix"], np.float32)
    rebuilt = IO * np.exp(-np.einsum("ck,nkp->npc", reference, found * scale[:, :, None].astype(np.float32)))
    out = np.clip(rebuilt, 0, 255).reshape(batch.shape)
    return np.where(usable[:, None, None, None], out, batch.astype(np.float32))


MACENKO = StainNormaliser(
    name="macenko", fit=fit, apply=apply,
    default_state={"stain_matrix": HE_REF.tolist(), "max_concentrations": MAX_C_REF.tolist()},
    description="Macenko et al. 2009: H&E vectors from optical density, concentrations scaled to a reference")


@hookimpl
def register_stain_normalisers(register):
    register(MACENKO)
