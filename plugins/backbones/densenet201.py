"""DenseNet201 (Huang et al. 2017), 1920-d pooled features; torch-style preprocessing."""

from toolkit import hookimpl
from toolkit.plugins.backbones.keras_application import keras_application


@hookimpl
def register_backbones(register):
    """Register ``densenet201``."""
    register(keras_application("densenet201", "densenet", "DenseNet201", 1920, "relu",
                               "DenseNet201, densely connected network (1920-d)"))
