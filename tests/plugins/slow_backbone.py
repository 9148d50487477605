"""A tiny backbone that takes ~0.4 s per batch, so that a test can kill a run in the middle."""

import time

import numpy as np

from toolkit import hookimpl
from toolkit.plugin.types import Backbone

DIM = 8
SECONDS_PER_BATCH = 0.4


def build(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(DIM, 3, strides=4, activation="relu", name="last_conv")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="slow")


def _wait(batch: np.ndarray) -> np.ndarray:
    time.sleep(SECONDS_PER_BATCH)
    return batch


def preprocess(batch):
    import tensorflow as tf

    waited = tf.numpy_function(_wait, [batch], tf.float32, stateful=True)
    waited.set_shape(batch.shape)
    return waited / 127.5 - 1.0


@hookimpl
def register_backbones(register):
    register(Backbone(name="slow", dim=DIM, build=build, preprocess=preprocess, input_size=(32, 32),
                      gradcam_layer="last_conv", imagenet=False, description="slow test backbone"))
