"""Deployment: TFLite variants with parity, SavedModel for TF Serving, tk predict and tk explain."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from tests.conftest import TINY, tk
from tests.datasets import make_breakhis


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every export format of one tiny run; the tests using it are slow, as int8 conversion is."""
    root = tmp_path_factory.mktemp("deploy")
    data = root / "breast"
    make_breakhis(data, patients=2, magnifications=(40, 100, 200, 400), per_magnification=2)  # 128 images
    store, out = root / "tk.duckdb", root / "exports"
    ran = tk("run", data, "--backbone", "tiny", "--weights", "random", "--store", store, "--analysis", "none",
             "--export", "none", "--plugin", TINY)
    assert ran.exit_code == 0, ran.stderr
    result = tk("export", "--backbone", "tiny", "--format",
                "tflite,tflite-fp16,tflite-dynamic,tflite-int8,savedmodel", "--store", store, "--out", out,
                "--plugin", TINY)
    assert result.exit_code == 0, result.stderr
    return data, store, out


def _parity(store):
    con = duckdb.connect(str(store), read_only=True)
    try:
        frame = con.execute("SELECT * FROM export_parity").df()
    finally:
        con.close()
    return frame.set_index("format")


@pytest.mark.slow
def test_tflite_variants_keep_parity(exported):
    _, store, out = exported
    parity = _parity(store)
    assert set(parity.index) == {"tflite", "tflite-fp16", "tflite-dynamic", "tflite-int8", "savedmodel"}
    for fmt in ("tflite", "tflite-fp16"):
        assert parity.loc[fmt, "centred_cosine_min"] >= 0.999, fmt
    assert parity.loc["tflite-int8", "centred_cosine_mean"] >= 0.95
    assert parity.loc["tflite-int8", "prediction_agreement"] >= 0.95
    assert parity.loc["tflite-int8", "input_type"].startswith("uint8")
    assert (parity["n_images"] == 32).all()
    sidecar = json.loads((out / "tflite" / "tiny" / "tiny-int8.json").read_text())
    assert sidecar["classes"] == ["benign", "malignant"] and sidecar["parity"]["size_bytes"] > 0
    assert parity.loc["tflite-int8", "size_bytes"] < parity.loc["tflite", "size_bytes"]


@pytest.mark.slow
def test_lite_models_take_uint8_pixels_as_they_are(exported):
    """tk's uint8 batches reach an int8 model unconverted (a float16 round trip cost ~17% of int8 runs);
    float pixels are still rounded and clipped to the same uint8 input."""
    from toolkit.extract.litert import LiteModel

    _, _, out = exported
    lite = LiteModel(out / "tflite" / "tiny" / "tiny-int8.tflite")
    runner, seen = lite.runner, []
    lite.runner = lambda images: seen.append(images) or runner(images=images)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 255, 128)
    as_uint8 = lite(pixels)
    as_float = lite(pixels.astype(np.float32) + np.float32(0.3))
    assert seen[0] is pixels
    assert seen[1].dtype == np.uint8 and np.array_equal(seen[1], pixels)
    np.testing.assert_array_equal(as_uint8["embedding"], as_float["embedding"])
    assert np.array_equal(lite(np.full((1, 32, 32, 3), 300.0))["embedding"], lite(np.full((1, 32, 32, 3), 255, np.uint8))["embedding"])


@pytest.mark.slow
def test_savedmodel_reloads_with_the_same_probabilities(exported):
    import tensorflow as tf

    from toolkit.models.classifier import load_classifier
    from toolkit.plugin.registry import load_registry
    from toolkit.store import Store

    data, store, out = exported
    version = out / "tiny_classifier" / "1"
    assert (version / "saved_model.pb").is_file()
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    pixels = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    served = signature(images=tf.constant(pixels))
    with Store.open(store, read_only=True) as opened:
        classifier = load_classifier(opened, load_registry([TINY]), "tiny")
    keras_out = classifier.predict(pixels)
    assert np.abs(served["probabilities"].numpy() - keras_out["probabilities"]).max() <= 1e-5
    assert served["embedding"].shape == (4, 16)
    assert _parity(store).loc["savedmodel", "max_probability_diff"] <= 1e-5


@pytest.mark.slow
def test_predict_and_explain(exported, tmp_path):
    data, store, out = exported
    images = sorted(data.rglob("*.png"))[:2]
    for model in (out / "tflite" / "tiny" / "tiny-int8.tflite", out / "tiny_classifier" / "1"):
        result = tk("predict", *images, "--model", model)
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0] == "image\tclass\tprobability\tlatency_ms\tweights" and len(lines) == 3
        assert all(line.split("\t")[1] in ("benign", "malignant") for line in lines[1:])
    explained = tk("explain", images[0], "--backbone", "tiny", "--store", store, "--out", tmp_path,
                   "--plugin", TINY)
    assert explained.exit_code == 0, explained.stderr
    overlay = tmp_path / f"{images[0].stem}.gradcam-tiny.png"
    assert explained.stdout.startswith(str(overlay))
    from PIL import Image

    width, height = Image.open(overlay).size
    assert width > 2 * height  # the original beside its overlay, not one square at the model's input size


@pytest.mark.slow
def test_predict_and_explain_say_the_weights_are_random(exported, tmp_path):
    """A model from a --weights random run answers with confident-looking probabilities; the output,
    stderr and the overlay PNG's caption say that its weights are random."""
    from PIL import Image

    data, store, out = exported
    image = sorted(data.rglob("*.png"))[0]
    for model in (out / "tflite" / "tiny" / "tiny-int8.tflite", out / "tiny_classifier" / "1"):
        result = tk("predict", image, "--model", model)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip().splitlines()[1].endswith("\trandom")
        assert "weights are random" in result.stderr
    explained = tk("explain", image, "--backbone", "tiny", "--store", store, "--out", tmp_path, "--plugin", TINY)
    assert explained.exit_code == 0, explained.stderr
    assert explained.stdout.strip().endswith("random weights") and "weights are random" in explained.stderr
    caption = Image.open(tmp_path / f"{image.stem}.gradcam-tiny.png").text["Description"]
    assert caption.startswith("Grad-CAM of tiny for ") and "weights are random" in caption


def test_predict_on_a_missing_model_is_one_line(tmp_path):
    result = tk("predict", tmp_path / "x.png", "--model", tmp_path / "none.tflite")
    assert result.exit_code == 1 and "not a .tflite file or a SavedModel folder" in result.stderr


def test_the_serving_graph_runs_plugin_preprocessing_as_is(caplog):
    """A backbone's preprocess may import lazily (the keras.applications ones do); AutoGraph must not
    try to convert it when the serving graph is traced (it warned twice per int8 run before)."""
    import dataclasses
    import importlib
    import logging

    from toolkit.extract.conversion import serving_function
    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    tiny = load_registry([str(TINY)]).backbone("tiny")
    model, _ = build_model(tiny, "random", 0)

    def lazily_importing(batch):
        return batch / importlib.import_module("math").e

    backbone = dataclasses.replace(tiny, preprocess=lazily_importing)
    with caplog.at_level(logging.WARNING):
        serving_function(backbone, model).get_concrete_function()
    assert not [r for r in caplog.records if "AutoGraph could not transform" in r.getMessage()]


def test_an_export_far_from_the_keras_model_warns_as_tk_run_precision_does(tmp_path, monkeypatch):
    """The int8 export's centred cosine below PARITY_WARNING_BELOW gives the same warning as
    `tk run --precision int8`, on the console and in the report's "Exported models" section."""
    from types import SimpleNamespace

    from toolkit.extract.precision import PARITY_WARNING_BELOW
    from toolkit.plugin.types import ExportContext
    from toolkit.plugins.exporters import deployment, parity
    from toolkit.store import Store

    rng = np.random.default_rng(0)
    reference = {"embedding": rng.normal(size=(8, 4)), "probabilities": np.full((8, 2), 0.5)}
    far = {"embedding": reference["embedding"] + rng.normal(size=(8, 4)), "probabilities": reference["probabilities"]}
    classifier = SimpleNamespace(backbone=SimpleNamespace(name="tiny"), predict=lambda pixels: reference)
    warned = []
    monkeypatch.setattr("toolkit.console.warn", warned.append)
    model = tmp_path / "tiny-int8.tflite"
    model.write_bytes(b"model")
    with Store.open(tmp_path / "s.duckdb") as store:
        export = ExportContext("r1", store)
        row = parity.measure(export, classifier, lambda pixels: far, "tflite-int8", model,
                             "uint8 RGB 0..255", np.zeros((8, 2, 2, 3), np.uint8))
        assert row["centred_cosine_mean"] < PARITY_WARNING_BELOW
        [handed] = export.handed  # stored by core once the export returns
        assert handed.spec is parity.PARITY and handed.where == {"run_id": "r1", "backbone": "tiny", "format": "tflite-int8"}
        store.tables.write(handed)
        assert len(warned) == 1 and "tiny tflite-int8 embeddings differ from the Keras model" in warned[0]
        assert f"below {PARITY_WARNING_BELOW}" in warned[0]
        context = SimpleNamespace(run_id="r1", store=store.reader())
        [section] = deployment.report_sections(context)
        assert section.data["parity_warnings"] == warned


@pytest.mark.slow
def test_export_prints_json_for_machines(exported):
    """Issue #17, item 12: tk export's parity table had no machine-readable form (and cut its headers)."""
    import json

    _, store, out = exported
    result = tk("export", "--backbone", "tiny", "--format", "tflite", "--store", store, "--out", out,
                "--json", "--plugin", TINY)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert any(path.endswith("tiny-fp32.tflite") for path in document["files"])
    [row] = [r for r in document["export_parity"] if r["format"] == "tflite"]
    assert row["backbone"] == "tiny" and 0 < row["centred_cosine_mean"] <= 1.0 + 1e-6
