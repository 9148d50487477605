"""Plugins that misbehave in every way a run must survive."""

import time

from toolkit import Analysis, Backbone, Exporter, Table, hookimpl


def raises(context):
    raise RuntimeError("this analysis always fails")


def malformed(context):
    return "not a list of results"


def well_behaved(context):
    """The first feature of every image: an analysis that works, beside those that do not."""
    import pandas as pd

    return [Table("coords", pd.DataFrame({"image_id": context.metadata["image_id"], "x": context.embeddings[:, 0]}))]


def sleepy(context):
    time.sleep(30)
    return []


def build_wrong_shape(weights):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3)(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


@hookimpl
def register_analyses(register):
    register(Analysis(name="raises", run=raises))
    register(Analysis(name="malformed", run=malformed))
    register(Analysis(name="sleepy", run=sleepy))
    register(Analysis(name="well_behaved", run=well_behaved))


@hookimpl
def register_backbones(register):
    register(Backbone(name="wrongshape", dim=7, build=build_wrong_shape, preprocess=lambda x: x,
                      input_size=(32, 32), imagenet=False))


def escape_out(context, out_dir):
    target = out_dir / ".." / "escaped.txt"
    target.write_text("outside")
    return [target]


def stray_out(context, out_dir):
    """Writes beside --out through a plain path (not the folder it was given) and returns nothing."""
    from pathlib import Path

    (Path(str(out_dir)).parent / "stray.txt").write_text("outside")
    return []


@hookimpl
def register_exporters(register):
    register(Exporter(name="escape", export=escape_out))
    register(Exporter(name="stray", export=stray_out))
