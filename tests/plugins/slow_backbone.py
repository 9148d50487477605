"""A test backbone that sleeps in every batch, so that a test can kill a run mid-extraction."""

import time

import numpy as np

from toolkit import Backbone, hookimpl

SECONDS_PER_BATCH = 0.25


def build(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


def _sleep(batch: np.ndarray) -> np.ndarray:
    time.sleep(SECONDS_PER_BATCH)
    return batch


def preprocess(batch):
    import tensorflow as tf

    slowed = tf.numpy_function(_sleep, [batch], tf.float32)
    slowed.set_shape(batch.shape)
    return slowed / 255.0


@hookimpl
def register_backbones(register):
    register(Backbone(name="slow", dim=8, build=build, preprocess=preprocess, input_size=(32, 32), imagenet=False))
