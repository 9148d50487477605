"""Say when ``tk train`` cannot learn, and why, instead of printing chance-level figures as results.

The usual cause is a backbone whose features barely vary between images: EfficientNetB0 with random
weights pools features of about 1e-6 (its squeeze-and-excitation blocks and swish activations shrink
activations block after block when nothing was trained). Adam moves each head weight by about the
learning rate per step, so the logits move by (weights x features) ~ 1e-6 per step: the head stays at
equal probabilities, the loss at ln(number of classes) (0.693 for two), and the held-out balanced
accuracy at 0.5. An AUC can still look perfect, because it ranks probabilities that differ only in the
seventh decimal.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

FLAT_SPREAD = 1e-4  # features whose spread across images is below this cannot train a head
CHANCE_TOLERANCE = 0.005  # a training loss this close to ln(k) in every epoch is chance


def feature_spread(features: np.ndarray) -> float:
    """How much the pooled features vary between images: the standard deviation across images,
    averaged over features."""
    return float(np.asarray(features, np.float64).std(axis=0).mean())


def flat_features_warning(backbone: str, weights_kind: str, spread: float) -> str | None:
    """A warning when the backbone's features are too flat for the head to learn from."""
    if spread >= FLAT_SPREAD:
        return None
    return (f"{backbone} with {weights_kind} weights gives features that hardly differ between images "
            f"(spread {spread:.1e}): the head cannot learn from them, so expect a loss stuck at chance and "
            f"meaningless held-out figures; start from trained weights (--weights imagenet or PATH)")


def chance_loss_warning(losses: Sequence[float], n_classes: int) -> str | None:
    """A warning when the training loss stayed at ln(``n_classes``), equal probabilities, in every epoch."""
    chance = math.log(n_classes)
    values = [value for value in losses if value is not None and math.isfinite(value)]
    if not values or any(abs(value - chance) > CHANCE_TOLERANCE for value in values):
        return None
    return (f"the training loss stayed at {chance:.3f} = ln {n_classes} (equal probabilities for every class) in "
            f"every epoch: the model did not learn, and its held-out figures are chance, whatever the AUC says")


def probe_spread(base: Any, preprocess: Any, pixels: np.ndarray) -> float:
    """``feature_spread`` of ``base`` on a few training images (raw RGB 0..255)."""
    features = base(preprocess(np.asarray(pixels, np.float32)), training=False)
    return feature_spread(np.asarray(features))
