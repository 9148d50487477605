"""Grad-CAM (Selvaraju et al. 2017): where in an image the class score's gradient flows.

The heatmap is the ReLU of the feature maps of the backbone's declared last convolutional layer,
weighted by the spatially averaged gradients of the chosen class probability.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image


def gradcam(model: Any, layer: str, pixels: np.ndarray, preprocess: Any,
            class_index: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``(n, h, w)`` in 0..1 at the layer's resolution and the class probabilities.

    :param model: a Keras model whose outputs include ``probabilities`` (or the probabilities
        tensor itself), built on a flat graph that contains ``layer``.
    :param class_index: explain this class (one for all images, or one per image); ``None``
        explains each image's predicted class.
    """
    import keras
    import tensorflow as tf

    probabilities = model.output["probabilities"] if isinstance(model.output, dict) else model.output
    probe = keras.Model(model.input, [model.get_layer(layer).output, probabilities])
    x = preprocess(tf.convert_to_tensor(pixels, tf.float32))
    with tf.GradientTape() as tape:
        maps, probs = probe(x, training=False)
        if class_index is None:
            chosen = tf.argmax(probs, axis=1)
        else:  # a scalar broadcasts to every image
            chosen = tf.broadcast_to(tf.constant(class_index, tf.int64), [tf.shape(probs)[0]])
        score = tf.gather(probs, chosen, axis=1, batch_dims=1)
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0), probs.numpy()


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heatmap resized bilinearly to ``size`` = (height, width)."""
    image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, caption: str | None = None) -> bytes:
    """The image with the heatmap blended on top (viridis, colour-blind safe), as PNG bytes; a
    ``caption`` is kept as the PNG's ``Description`` text."""
    from matplotlib import colormaps
    from PIL.PngImagePlugin import PngInfo

    heat = upsample(heatmap, pixels.shape[:2])
    colours = colormaps["viridis"](np.clip(heat, 0, 1))[..., :3] * 255
    blended = (1 - alpha * heat[..., None]) * pixels.astype(np.float64) + alpha * heat[..., None] * colours
    buffer = io.BytesIO()
    info = PngInfo()
    if caption:
        info.add_text("Description", caption)
    Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
