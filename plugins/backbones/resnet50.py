"""ResNet50 (He et al. 2016), 2048-d pooled features; caffe-style preprocessing (BGR, mean-subtracted)."""

from toolkit import hookimpl
from toolkit.plugins.backbones.keras_application import keras_application


@hookimpl
def register_backbones(register):
    """Register ``resnet50``."""
    register(keras_application("resnet50", "resnet50", "ResNet50", 2048, "conv5_block3_out",
                               "ResNet50, ImageNet-pretrained residual network (2048-d)"))
