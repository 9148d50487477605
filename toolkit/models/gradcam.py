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


ALPHA = 0.45  # how much of the heatmap's colour covers the image where the heatmap is 1


def blend(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``pixels`` (h, w, 3) with the heatmap, resized to them, blended on top in viridis (colour-blind
    safe), as uint8."""
    from matplotlib import colormaps

    heat = upsample(heatmap, pixels.shape[:2])
    colours = colormaps["viridis"](np.clip(heat, 0, 1))[..., :3] * 255
    blended = (1 - alpha * heat[..., None]) * pixels.astype(np.float64) + alpha * heat[..., None] * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def _png_info(caption: str | None) -> Any:
    """PNG text chunks: ``caption`` as ``Description``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if caption:
        info.add_text("Description", caption)
    return info


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> bytes:
    """The image with the heatmap blended on top, as PNG bytes (the report's gallery)."""
    buffer = io.BytesIO()
    Image.fromarray(blend(pixels, heatmap, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def explanation_png(image: np.ndarray, heatmap: np.ndarray, title: str, caption: str | None = None) -> bytes:
    """The image at its own aspect ratio beside the same image with the heatmap blended on, a colour
    bar saying what the colours mean and ``title`` (the predicted class) above, as PNG bytes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from toolkit.analysis.figures import new_figure

    height, width = image.shape[:2]
    panel = 3.2
    figure, _ = new_figure(2 * panel * width / height + 1.2, panel + 0.8)
    figure.clf()
    left, right = figure.subplots(1, 2)
    for axis, shown, name in ((left, image, "original"), (right, blend(image, heatmap), "Grad-CAM")):
        axis.imshow(shown)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    figure.colorbar(ScalarMappable(Normalize(0, 1), "viridis"), ax=[left, right], fraction=0.025, pad=0.02,
                    label="pushed towards the class (0 not, 1 most)")  # both panels keep one size
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pil_kwargs={"pnginfo": _png_info(caption)})
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()
