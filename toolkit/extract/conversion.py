"""Keras model -> SavedModel -> TFLite: what the deployment exporters and ``tk run --precision int8``
share. The serving signature takes float32 RGB images (0..255) named ``images``; preprocessing is
part of the graph, so a converted model needs nothing but raw pixels."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import TkError
from toolkit.plugin.types import Backbone


def serving_function(backbone: Backbone, model: Any) -> Any:
    """float32 images (n, h, w, 3), RGB 0..255 -> the model's outputs; a plain embedding model's
    single output is named ``embedding``."""
    import tensorflow as tf

    height, width = backbone.input_size
    preprocess = tf.autograph.experimental.do_not_convert(backbone.preprocess)  # plain tensor code

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(preprocess(images), training=False)
        return dict(outputs) if isinstance(outputs, dict) else {"embedding": tf.cast(outputs, tf.float32)}

    return serve


def write_savedmodel(backbone: Backbone, model: Any, directory: Path) -> Path:
    """A SavedModel with the ``serving_default`` signature (TF Serving and TFLite both read it)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    serve = serving_function(backbone, model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=serve.input_signature)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # Keras lists every captured tensor
        archive.write_out(str(directory))
    return directory


def convert(savedmodel: Path, variant: str, calibration: np.ndarray) -> bytes:
    """Convert a SavedModel to TFLite: ``fp32``, ``fp16``, ``dynamic`` or ``int8`` (full-integer,
    calibrated on ``calibration`` (n, h, w, 3) raw pixels, uint8 input 0..255, float32 outputs)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel))
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def calibration_sample(contents: list[tuple[str, str]], size: tuple[int, int], seed: int, n_calibration: int,
                       n_parity: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out images (raw RGB uint8) from ``contents`` (path and scanned sha256,
    one per distinct content, in a fixed order), shuffled by ``seed``. Each is decoded from bytes that
    still hash to its sha256 (``read_verified``); unreadable, vanished or changed files are passed over.

    Held-out images are never used for calibration unless there are too few images (then both are
    every image).
    """
    from toolkit.ingest.images import UnreadableImage, load_rgb, read_verified

    contents = list(contents)
    np.random.default_rng(seed).shuffle(contents)
    pixels = []
    for path, sha256 in contents:
        if len(pixels) == n_calibration + n_parity:
            break
        try:
            pixels.append(load_rgb(read_verified(path, sha256), size))
        except UnreadableImage:
            continue  # the file changed since it was scanned; the others serve
    if not pixels:
        raise TkError("no readable image to calibrate or check the converted model with")
    stack = np.stack(pixels)
    held_out = stack[-min(n_parity, len(stack)):]
    calibration = stack[: len(stack) - n_parity] if len(stack) > n_parity else stack
    return calibration, held_out
