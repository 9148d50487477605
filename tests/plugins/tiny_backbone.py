"""A tiny test backbone, registered through the same hook third-party plugins use."""

from toolkit import Backbone, hookimpl

DIM = 16


def build(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(DIM, 3, strides=2, activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, x, name="tiny")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


def preprocess(batch):
    return batch / 127.5 - 1.0


@hookimpl
def register_backbones(register):
    register(Backbone(name="tiny", dim=DIM, build=build, preprocess=preprocess, input_size=(32, 32),
                      gradcam_layer="last_conv", imagenet=False, description="test backbone"))
