"""Batch norm folded into the convolution before it (toolkit.extract.folding): which pairs fold, and that the
folded network computes what the original computes, with batch-norm statistics far from identity."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.extract.tfimport import tensorflow

tensorflow()
import keras  # noqa: E402

from toolkit.extract.folding import PassThrough, fold_batch_norm, foldable_pairs  # noqa: E402


def _randomise_norms(model, seed=0):
    """Moving statistics and affine terms far from the identity a fresh layer has."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.3, 2.0, n).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.5, n).astype("float32"))
    return model


def _mixed_model():
    """Every case: foldable convolutions with and without bias, a depthwise one with a multiplier,
    and three that must stay (activation inside the convolution, two consumers, batch norm after
    a concatenation)."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="plain_conv")(inputs)
    x = keras.layers.BatchNormalization(name="plain_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw_conv")(x)
    x = keras.layers.BatchNormalization(name="dw_bn", center=False)(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="act_conv")(x)
    x = keras.layers.BatchNormalization(name="act_bn")(x)
    shared = keras.layers.Conv2D(8, 1, name="shared_conv")(x)
    y = keras.layers.BatchNormalization(name="shared_bn", scale=False)(shared)
    x = keras.layers.Concatenate()([y, shared])
    x = keras.layers.BatchNormalization(name="concat_bn")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, name="bias_conv")(x)
    x = keras.layers.BatchNormalization(name="bias_bn", epsilon=0.01)(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return _randomise_norms(keras.Model(inputs, outputs))


def test_only_exact_convolution_batch_norm_pairs_fold():
    assert foldable_pairs(_mixed_model()) == {"plain_bn": "plain_conv", "dw_bn": "dw_conv", "bias_bn": "bias_conv"}


def test_the_folded_model_computes_what_the_original_computes():
    model = _mixed_model()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(1).normal(0, 1, (4, 12, 12, 3)).astype("float32")
    folded = fold_batch_norm(model)

    names = {layer.name: type(layer) for layer in folded.layers}
    assert names["plain_bn"] is names["dw_bn"] is names["bias_bn"] is PassThrough
    assert [n for n, kind in names.items() if kind is keras.layers.BatchNormalization] == \
        ["act_bn", "shared_bn", "concat_bn"]
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(folded(x, training=False).numpy(), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "the original must not change"


def test_nothing_to_fold_returns_the_model_itself():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, activation="relu")(inputs))
    assert fold_batch_norm(model) is model


@pytest.mark.parametrize("order", ["fold then lower", "lower then fold"])
def test_folding_and_mixed_precision_combine_in_either_order(order):
    """tk run folds when it builds a model and lowers it afterwards; a lowered model given to
    make_extractor is folded there. Both must compute in bf16 and agree with the unfolded model."""
    from toolkit.extract.precision import mixed_model

    original = _mixed_model()
    if order == "fold then lower":
        model = mixed_model(fold_batch_norm(original), "bf16")
    else:
        model = fold_batch_norm(mixed_model(original, "bf16"))
    assert model.get_layer("plain_conv").compute_dtype == "bfloat16"
    assert model.get_layer("plain_bn").compute_dtype == "bfloat16"
    assert isinstance(model.get_layer("plain_bn"), PassThrough)
    x = np.random.default_rng(2).normal(0, 1, (4, 12, 12, 3)).astype("float32")
    a = np.asarray(original(x, training=False), np.float64).ravel()
    b = np.asarray(model(x, training=False), np.float64).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("name,n_folded", [("efficientnetb0", 49)])
def test_a_real_backbone_folds_and_embeds_the_same(name, n_folded):
    """EfficientNetB0 (depthwise convolutions, squeeze-excitation): every batch norm follows a
    convolution; the fast path with and without folding agrees to cosine >= 0.99999."""
    from toolkit.extract.pipeline import make_extractor
    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    backbone = load_registry().backbone(name)
    model, _ = build_model(backbone, "random", 0)
    _randomise_norms(model)
    assert len(foldable_pairs(model)) == n_folded
    pixels = np.random.default_rng(3).integers(0, 256, (4, *backbone.input_size, 3), dtype=np.uint8)
    plain = make_extractor(backbone, model, 4, fold=False)(pixels).astype(np.float64)
    folded = make_extractor(backbone, model, 4, fold=True)(pixels).astype(np.float64)
    cosine = (plain * folded).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(folded, axis=1)
    assert cosine.min() >= 0.99999
    assert np.abs(plain - folded).max() <= 1e-4 * np.abs(plain).max()
