"""Backbones whose network is not a Keras model (an ONNX graph, say): ``Backbone.extractor``.

Such a network is held as an ``ExternalModel`` and called on the preprocessed batch in numpy. It
computes in fp32 only and has no Keras graph, so lower precisions, Grad-CAM, ``tk train`` and the
model exporters refuse it with one line (``require_keras``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from toolkit.errors import TkError
from toolkit.plugin.types import Backbone


@dataclass(frozen=True)
class ExternalModel:
    """A backbone's network outside Keras: ``run(preprocessed float32 batch) -> (n, dim)``."""

    backbone: str
    run: Callable[[np.ndarray], Any]


def is_external(model: Any) -> bool:
    """Whether ``model`` is a network outside Keras (from ``Backbone.extractor``)."""
    return isinstance(model, ExternalModel)


def require_keras(backbone: Backbone, model: Any, needs: str) -> None:
    """Raise a one-line TkError when ``model`` is not a Keras model; ``needs`` says what needed one."""
    if is_external(model):
        raise TkError(f"backbone {backbone.name} is not a Keras model ({backbone.description or 'it runs outside Keras'}), "
                      f"so {needs} cannot use it; it embeds in fp32 (tk run, tk similar, the analyses and the report)")


def external_extractor(backbone: Backbone, model: ExternalModel) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB batch -> float32 ``(n, dim)`` embeddings through ``backbone.preprocess`` and ``model``."""

    def extract(batch: np.ndarray) -> np.ndarray:
        pixels = np.asarray(backbone.preprocess(np.asarray(batch, dtype=np.float32)), dtype=np.float32)
        out = np.asarray(model.run(pixels), dtype=np.float32)
        if out.shape != (len(batch), backbone.dim):
            raise TkError(f"backbone {backbone.name} declares dim {backbone.dim} but its model gave shape "
                          f"{out.shape} for {len(batch)} images; fix its dim or its pooling")
        return out

    return extract
