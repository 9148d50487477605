"""Grad-CAM points at what decides the class: a tiny CNN learns that a bright patch means class 1,
and Grad-CAM's peak falls inside the patch (pointing game)."""

from __future__ import annotations

import numpy as np


def _images(rng, n, size=48, patch=8):
    x = rng.uniform(60, 140, (n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = []
    for i in range(n):
        r, c = rng.integers(0, size - patch, 2)
        boxes.append((r, c))
        if y[i]:
            x[i, r:r + patch, c:c + patch] = 255.0
    return x, y, boxes, patch


def test_pointing_game():
    import keras

    from toolkit.models.gradcam import gradcam, upsample

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, _, _ = _images(rng, 600)
    inputs = keras.Input((48, 48, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(h)
    pooled = keras.layers.GlobalMaxPooling2D()(h)
    probabilities = keras.layers.Dense(2, activation="softmax")(pooled)
    model = keras.Model(inputs, {"probabilities": probabilities})
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={"probabilities": "sparse_categorical_crossentropy"},
                  metrics={"probabilities": "accuracy"})
    model.fit(x / 255.0, {"probabilities": y}, epochs=8, batch_size=32, verbose=0)

    test_x, test_y, boxes, patch = _images(np.random.default_rng(1), 100)
    positives = np.flatnonzero(test_y == 1)
    heatmaps, probs = gradcam(model, "last_conv", test_x[positives], lambda t: t / 255.0, class_index=1)
    assert (probs.argmax(axis=1) == 1).mean() >= 0.9, "the CNN did not learn the patch"
    hits = 0
    for heatmap, index in zip(heatmaps, positives):
        full = upsample(heatmap, (48, 48))
        r, c = np.unravel_index(np.argmax(full), full.shape)
        top, left = boxes[index]
        hits += top - 2 <= r < top + patch + 2 and left - 2 <= c < left + patch + 2
    assert hits / len(positives) >= 0.8, f"pointing game {hits}/{len(positives)}"


def test_the_explanation_keeps_the_aspect_ratio_and_shows_the_original_beside_the_overlay():
    """Issue #17, item 16: tk explain wrote a bare 224x224 overlay squashed from 700x460."""
    import io

    from PIL import Image

    from toolkit.models.gradcam import explanation_png

    image = np.zeros((46, 70, 3), dtype=np.uint8)
    heatmap = np.zeros((7, 7))
    heatmap[2, 5] = 1.0
    png = explanation_png(image, heatmap, "tiny: malignant (97%)", caption="Grad-CAM of tiny for malignant")
    shown = Image.open(io.BytesIO(png))
    width, height = shown.size
    assert width / height > 2  # two panels of the image's own 70:46 shape side by side (a squashed square was 1)
    assert shown.text["Description"] == "Grad-CAM of tiny for malignant"
