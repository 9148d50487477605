"""A stand-in test backbone in plain numpy: no network, no Keras, no TensorFlow.

Tests whose point is not the network (statistics, the store, the report, sources, bad inputs, ...)
embed with this one. Its embedding is a fixed random projection of colour and texture statistics of
the image: deterministic, different for every image, and different between tissues that look
different (the generated malignant tiles are darker, with more and larger dots), so statistics see
real class differences. It registers the way an ONNX encoder does: an ``extractor`` whose weights file
is this module, so that editing the stand-in starts a new embedding set.
"""

from __future__ import annotations

import numpy as np

from toolkit import Backbone, hookimpl

NAME = "stand_in"
DIM = 16
QUANTILES = (0.1, 0.5, 0.9)
GRID = 4


def statistics(batch: np.ndarray) -> np.ndarray:
    """Per image and channel: mean, standard deviation, three quantiles, the mean absolute difference
    to the next pixel across and down (texture), and the mean of each cell of a 4 x 4 grid (layout,
    so that images of one class differ too); ``(n, 69)``."""
    n, height, width, _ = batch.shape
    pixels = batch.reshape(n, -1, 3)
    across = np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2))
    down = np.abs(np.diff(batch, axis=1)).mean(axis=(1, 2))
    quantiles = np.quantile(pixels, QUANTILES, axis=1)  # (3 quantiles, n, 3 channels)
    grid = batch.reshape(n, GRID, height // GRID, GRID, width // GRID, 3).mean(axis=(2, 4)).reshape(n, -1)
    return np.concatenate([pixels.mean(axis=1), pixels.std(axis=1), *quantiles, across, down, grid], axis=1)


PROJECTION = np.random.default_rng(0).normal(size=(statistics(np.zeros((1, GRID, GRID, 3))).shape[1], DIM)) / np.sqrt(DIM)


def embed(batch: np.ndarray) -> np.ndarray:
    """``(n, height, width, 3)`` preprocessed pixels -> ``(n, DIM)`` float32 embeddings."""
    return np.tanh(statistics(np.asarray(batch, np.float64)) @ PROJECTION).astype(np.float32)


def extractor(weights: str | None):
    """The stand-in's network for its weights file (this module): the same function whatever the file."""
    return embed


def build(weights: str | None):
    raise NotImplementedError("the stand-in backbone has no Keras model; use the tiny backbone to test one")


def preprocess(batch: np.ndarray) -> np.ndarray:
    return batch / 127.5 - 1.0


@hookimpl
def register_backbones(register):
    register(Backbone(name=NAME, dim=DIM, build=build, preprocess=preprocess, input_size=(32, 32),
                      imagenet=False, fixed_weights=__file__, extractor=extractor,
                      description="numpy stand-in for tests (not a network)"))
