"""EfficientNetB0 (Tan & Le 2019), 1280-d pooled features; the model rescales inputs itself.

Keras adds EfficientNet's ImageNet input rescaling layer only when ``weights="imagenet"``; a local
copy of the same weights loaded by path would be silently mis-scaled. ``build`` therefore folds that
rescaling into the Normalization layer's variance after loading a local file.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from toolkit import hookimpl
from toolkit.plugins.backbones.keras_application import keras_application

IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def build(weights: str | None) -> Any:
    """EfficientNetB0 without top, average-pooled; local weight files get the ImageNet rescaling."""
    import keras
    import numpy as np

    local_file = weights not in (None, "imagenet")
    with contextlib.redirect_stdout(sys.stderr):
        model = keras.applications.EfficientNetB0(include_top=False, weights=None if local_file else weights,
                                                  pooling="avg", input_shape=(224, 224, 3))
    if local_file:
        model.load_weights(weights)
        normalization = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
        # imagenet builds divide by sqrt(variance) and again by sqrt(stddev): fold the second into the first
        variance = np.asarray(normalization.adapt_variance.numpy())
        normalization.adapt_variance.assign(variance * np.asarray(IMAGENET_STDDEV_RGB, dtype=variance.dtype))
        normalization.finalize_state()
    return model


@hookimpl
def register_backbones(register):
    """Register ``efficientnetb0``."""
    register(keras_application("efficientnetb0", "efficientnet", "EfficientNetB0", 1280, "top_activation",
                               "EfficientNetB0, compound-scaled network (1280-d)", build=build))
