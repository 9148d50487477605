"""Shared builder for backbones that come from ``keras.applications`` (imported lazily)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, Callable

import numpy as np

from toolkit import Backbone


def _application(module: str) -> Any:
    return importlib.import_module(f"keras.applications.{module}")


def keras_application(name: str, module: str, constructor: str, dim: int, gradcam_layer: str,
                      description: str, build: Callable[[str | None], Any] | None = None) -> Backbone:
    """A Backbone for ``keras.applications.<module>.<constructor>`` with ``include_top=False, pooling="avg"``.

    ``build`` overrides the default builder (EfficientNet needs one for local weight files).
    """

    def default_build(weights: str | None) -> Any:
        factory = getattr(_application(module), constructor)
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints download progress to stdout
            return factory(include_top=False, weights=weights, pooling="avg", input_shape=(224, 224, 3))

    def preprocess(batch: Any) -> Any:
        if isinstance(batch, np.ndarray):  # keras' preprocess_input writes into float numpy arrays
            batch = batch.astype(np.float32, copy=True)
        return _application(module).preprocess_input(batch)

    return Backbone(name=name, dim=dim, build=build or default_build, preprocess=preprocess,
                    input_size=(224, 224), gradcam_layer=gradcam_layer, description=description)
