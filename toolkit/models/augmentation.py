"""Training-time augmentation for ``tk train``: flips, rotations, zooms, shifts and an H&E stain
jitter, applied to training images only."""

from __future__ import annotations

from typing import Any

import numpy as np

AUGMENT_RANGES = {"rotation": 0.5, "zoom": 0.1, "translation": 0.1, "stain_sigma": 0.05}
"""RandomRotation factor (fraction of a full turn: 0.5 = any angle), RandomZoom and
RandomTranslation height/width factors, and the HED stain jitter's sigma (Tellez et al. 2018)."""
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
"""Ruifrok & Johnston (2001) stain vectors: haematoxylin, eosin, DAB optical densities in RGB."""


def stain_jitter_layer(sigma: float, seed: int) -> Any:
    """A Keras layer perturbing haematoxylin, eosin and DAB optical densities per image (training only)."""
    import keras

    hed_from_rgb = np.linalg.inv(RGB_FROM_HED).astype(np.float32)

    class StainJitter(keras.layers.Layer):
        """HED colour augmentation: ``hed * U(1-s, 1+s) + U(-s, s)`` per image and stain."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images: Any, training: bool | None = None) -> Any:
            if not training:
                return images
            ops = keras.ops
            density = -ops.log(ops.clip(images, 1.0, 255.0) / 255.0)
            hed = ops.matmul(density, hed_from_rgb)
            shape = (ops.shape(images)[0], 1, 1, 3)
            scale = keras.random.uniform(shape, 1 - sigma, 1 + sigma, seed=self.seed_generator)
            shift = keras.random.uniform(shape, -sigma, sigma, seed=self.seed_generator)
            return ops.clip(255.0 * ops.exp(-ops.matmul(hed * scale + shift, RGB_FROM_HED)), 0.0, 255.0)

    return StainJitter(name="stain_jitter")


def augmentation(seed: int) -> Any:
    """Flip, rotation, zoom, translation and H&E stain jitter; every layer is inactive at inference."""
    import keras

    r = AUGMENT_RANGES
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(r["rotation"], fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(r["zoom"], fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomTranslation(r["translation"], r["translation"], fill_mode="reflect", seed=seed + 3),
        stain_jitter_layer(r["stain_sigma"], seed + 4),
    ], name="augmentation")
