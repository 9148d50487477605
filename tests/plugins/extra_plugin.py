"""A third-party style plugin file: one backbone and one analysis, loaded with --plugin."""

import numpy as np
import pandas as pd

from toolkit import Analysis, Backbone, Finding, Needs, Table, hookimpl

__version__ = "1.2.3"


def build(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


def feature_means(context):
    means = np.asarray(context.embeddings).mean(axis=0)
    return [Table("main", pd.DataFrame({"feature": np.arange(len(means)), "mean": means})),
            Finding(f"{len(means)} feature means computed")]


@hookimpl
def register_backbones(register):
    register(Backbone(name="micro", dim=4, build=build, preprocess=lambda x: x / 255.0, input_size=(32, 32),
                      imagenet=False))


@hookimpl
def register_analyses(register):
    register(Analysis(name="feature_means", run=feature_means, needs=Needs(min_samples=2),
                      title="Feature means"))
