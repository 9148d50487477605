"""Built-in backbones: ResNet50, EfficientNetB0 and DenseNet201 from ``keras.applications``."""
