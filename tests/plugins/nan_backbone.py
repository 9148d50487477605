"""A backbone whose embeddings are all NaN (as a broken model or an fp16 overflow would give)."""

from toolkit import Backbone, hookimpl

DIM = 4


def build(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(DIM, 3, strides=4, name="last_conv")(inputs)  # linear: NaN in, NaN out
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="nan")
    return model


def preprocess(batch):
    return batch * float("nan")


@hookimpl
def register_backbones(register):
    register(Backbone(name="nan", dim=DIM, build=build, preprocess=preprocess, input_size=(32, 32),
                      gradcam_layer="last_conv", imagenet=False, description="test backbone giving NaN"))
