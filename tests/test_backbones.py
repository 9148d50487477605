"""The three real networks (random weights, so no download): dims, preprocessing, stored vectors."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.conftest import tk
from tests.datasets import make_breakhis
from toolkit.ingest.images import load_rgb
from toolkit.plugin.registry import load_registry
from toolkit.extract.weights import build_model

pytestmark = pytest.mark.slow
EXPECTED_DIMS = {"resnet50": 2048, "efficientnetb0": 1280, "densenet201": 1920}


def test_preprocessing_is_each_networks_own():
    import tensorflow as tf

    registry = load_registry()
    white = tf.fill((1, 2, 2, 3), 255.0)
    red = tf.constant([[[[255.0, 0.0, 0.0]]]])
    resnet = registry.backbone("resnet50").preprocess(red).numpy().ravel()
    np.testing.assert_allclose(resnet, [-103.939, -116.779, 255 - 123.68], atol=1e-3)  # caffe: BGR, mean-subtracted
    densenet = registry.backbone("densenet201").preprocess(white).numpy()[0, 0, 0]
    np.testing.assert_allclose(densenet, (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-5)
    efficientnet = registry.backbone("efficientnetb0").preprocess(white).numpy()
    np.testing.assert_allclose(efficientnet, 255.0)  # the model rescales inside


def test_all_three_backbones_end_to_end_match_a_plain_model_call(tmp_path):
    data = tmp_path / "breast"
    paths = make_breakhis(data, patients=1, magnifications=(40,), per_magnification=1)  # 4 images
    store = tmp_path / "tk.duckdb"
    result = tk("run", data, "--backbone", "all", "--weights", "random", "--store", store,
                "--analysis", "none", "--export", "none")
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    registry = load_registry()
    for name, dim in EXPECTED_DIMS.items():
        rows = con.execute(f"SELECT i.relpath, e.vector FROM embeddings_{name} e JOIN images i USING (image_id) "
                           "ORDER BY i.relpath").fetchall()
        assert len(rows) == 4 and all(len(vector) == dim for _, vector in rows)
        backbone = registry.backbone(name)
        model, resolved = build_model(backbone, "random", 0)
        assert resolved.weights_id == "random-seed0"
        pixels = np.stack([load_rgb(data / relpath, backbone.input_size) for relpath, _ in rows]).astype(np.float32)
        plain = model(backbone.preprocess(pixels), training=False).numpy()
        stored = np.asarray([vector for _, vector in rows], dtype=np.float32)
        cosine = (plain * stored).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(stored, axis=1)
        assert cosine.min() >= 0.99999, (name, cosine)
    assert len(paths) == 4


def test_efficientnet_local_weights_get_the_imagenet_rescaling(tmp_path, monkeypatch):
    """Keras adds a Rescaling layer only for weights="imagenet"; a local copy must embed identically."""
    import keras
    from keras.src.applications import efficientnet

    from toolkit.plugins.backbones.efficientnetb0 import build

    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, pooling="avg")
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    normalization.adapt_mean.assign([0.485, 0.456, 0.406])
    normalization.adapt_variance.assign(np.square([0.229, 0.224, 0.225]))
    normalization.finalize_state()
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    source.save_weights(path)

    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(path))
    official = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", pooling="avg")
    ours = build(str(path))
    naive = keras.applications.EfficientNetB0(include_top=False, weights=str(path), pooling="avg")

    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    expected = official(x).numpy()
    scale = np.abs(expected).max()  # random-init outputs are small: compare relative to their size
    assert np.abs(ours(x).numpy() - expected).max() / scale < 1e-4
    assert np.abs(naive(x).numpy() - expected).max() / scale > 0.1  # the pitfall is real
