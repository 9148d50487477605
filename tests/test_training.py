"""``tk train``: balancing, augmentation, determinism, the patient split, variants in run/explain/export."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.conftest import TINY, run_tk, tk
from tests.datasets import image_path, tile
from toolkit.errors import TkError
from toolkit.plugin.registry import load_registry
from toolkit.ingest.scan import sha256_file
from toolkit.models.training import TrainSettings, classifier_model, train
from toolkit.models.training_data import class_weights, oversampled, patient_split
from toolkit.models.variants import find_backbone

QUICK = {"backbone": "tiny", "weights": "random", "plugins": [str(TINY)], "epochs": 8, "learning_rate": 0.01,
         "batch_size": 8, "unfreeze": 0, "n_bootstrap": 200, "patience": 100}


def make_imbalanced(root: Path, benign: int = 3, malignant: int = 9, per_patient: int = 8, seed: int = 0) -> Path:
    """12 patients, 75% of the images malignant (tests.datasets.tile draws the class signal)."""
    rng = np.random.default_rng(seed)
    for k in range(benign + malignant):
        code = "A" if k < benign else "DC"
        for seq in range(1, per_patient + 1):
            path = image_path(root, code, f"14-{200 + k}", 100, seq)
            path.parent.mkdir(parents=True, exist_ok=True)
            tile(rng, code == "DC").save(path)
    return root


@pytest.fixture
def imbalanced(tmp_path: Path) -> Path:
    return make_imbalanced(tmp_path / "BreaKHis_v1" / "histology_slides" / "breast")


@pytest.mark.slow
def test_class_weights_raise_minority_sensitivity_on_held_out_patients(imbalanced, tmp_path):
    store = tmp_path / "tk.duckdb"
    outcomes, differences = train(TrainSettings(data=imbalanced, store=store, seed=0, **QUICK), ablation=True)
    assert len(outcomes) == 4
    sensitivity = {(o.settings.augment, o.settings.balance):
                   o.metrics.query("metric == 'sensitivity' and `class` == 'benign'")["value"].iloc[0]
                   for o in outcomes}
    assert sensitivity[(False, "weights")] > sensitivity[(False, "none")]
    row = differences.query("factor == 'balance weights − none (augment off)' and metric == 'sensitivity'").iloc[0]
    assert row["class"] == "benign" and row["difference"] > 0
    assert (differences["ci_low"] <= differences["difference"] + 1e-12).all()
    assert (differences["difference"] <= differences["ci_high"] + 1e-12).all()
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM training_runs WHERE status = 'ok' AND ablation_id IS NOT NULL").fetchone()[0] == 4
        assert con.execute("SELECT count(*) FROM training_differences").fetchone()[0] == len(differences) == 8
        held_out = con.execute("SELECT DISTINCT n_val_patients FROM training_runs").fetchall()
    assert held_out == [(4,)]


@pytest.mark.slow
def test_same_seed_gives_the_same_final_validation_loss(imbalanced, tmp_path):
    settings = TrainSettings(data=imbalanced, store=tmp_path / "tk.duckdb", seed=3,
                             **{**QUICK, "epochs": 2, "unfreeze": 1}, augment=True)
    losses = [train(settings)[0][0].history for _ in range(2)]
    assert list(losses[0]["phase"]) == ["head", "head", "finetune", "finetune"]
    assert abs(losses[0]["val_loss"].iloc[-1] - losses[1]["val_loss"].iloc[-1]) < 1e-6


def test_augmentation_is_inactive_at_inference():
    backbone = load_registry([str(TINY)]).backbone("tiny")
    model = classifier_model(backbone, backbone.build(None), 2, TrainSettings(augment=True, seed=1))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    first, second = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    assert not np.allclose(np.asarray(model.get_layer("augmentation")(x, training=True)), x)


def test_patient_split_holds_out_whole_patients_of_every_class():
    y = np.repeat([0, 0, 0, 1, 1, 1, 1, 1, 1], 5)
    patients = np.repeat(np.arange(9), 5)
    val = patient_split(y, patients, 0.25, seed=0)
    assert not set(patients[val]) & set(patients[~val])
    assert set(y[val]) == {0, 1}
    with pytest.raises(TkError, match="2 patients"):
        patient_split(np.array([0, 1]), np.array([0, 1]), 0.25, seed=0)


def test_balancing_modes():
    y = np.array([0] * 2 + [1] * 6)
    np.testing.assert_allclose(class_weights(y, 2), [2.0, 2 / 3])
    drawn = oversampled(np.arange(8), y, seed=0)
    assert np.bincount(y[drawn]).tolist() == [6, 6]


def test_unknown_variant_is_one_clear_error():
    registry = load_registry([str(TINY)])
    with pytest.raises(TkError, match="tk train --backbone tiny"):
        find_backbone(registry.backbones, "tiny@t20000101t000000-0000")
    with pytest.raises(TkError, match="unknown backbone 'nope'"):
        find_backbone(registry.backbones, "nope@t20000101t000000-0000")


@pytest.mark.slow
def test_train_then_run_explain_and_export_the_variant(imbalanced, tmp_path):
    store, reports = tmp_path / "tk.duckdb", tmp_path / "reports"
    # a fresh process: what TensorFlow's native libraries print at import is the point
    trained = run_tk("train", imbalanced, "--backbone", "tiny", "--plugin", TINY, "--weights", "random",
                     "--epochs", "1", "--unfreeze", "1", "--store", store)
    assert trained.exit_code == 0, trained.stderr
    variant = trained.stdout.strip().splitlines()[-1]
    assert variant.startswith("tiny@t") and "head epoch 1/1" in trained.stderr
    assert "oneDNN" not in trained.stderr and "absl" not in trained.stderr  # TensorFlow imported quietly
    assert (tmp_path / "tk_models" / f"{variant}.keras").is_file()

    ran = tk("run", imbalanced, "--backbone", f"tiny,{variant}", "--plugin", TINY, "--weights", "random",
             "--analysis", "probe", "--store", store, "--out", reports)
    assert ran.exit_code == 0, ran.stderr
    con = duckdb.connect(str(store), read_only=True)
    weights = con.execute("SELECT weights_kind, weights_sha256 FROM run_backbones WHERE backbone = ?", [variant]).fetchall()
    con.close()
    assert weights == [("file", sha256_file(tmp_path / "tk_models" / f"{variant}.keras"))]  # not --weights random
    html = next(reports.glob("*.html")).read_text()
    section = html[html.index('id="training"'):]
    assert "Fine-tuned backbones" in section and f"Linear probe on {variant} embeddings" in section
    assert "Frozen tiny, linear probe" in section and 'alt="Training curve of' in section  # figures are <img>

    image = next(imbalanced.rglob("*.png"))
    explained = tk("explain", image, "--backbone", variant, "--plugin", TINY, "--store", store,
                   "--out", tmp_path / "explain")
    assert explained.exit_code == 0, explained.stderr
    assert Path(explained.stdout.split("\t")[0]).is_file()
    exported = tk("export", "--backbone", variant, "--format", "savedmodel", "--plugin", TINY,
                  "--store", store, "--out", tmp_path / "exports")
    assert exported.exit_code == 0, exported.stderr

    (tmp_path / "tk_models" / f"{variant}.keras").write_bytes(b"tampered")
    tampered = tk("explain", image, "--backbone", variant, "--plugin", TINY, "--store", store)
    assert tampered.exit_code != 0 and "changed since training" in tampered.stderr


@pytest.mark.slow
def test_a_report_shows_only_variants_trained_on_its_images_or_used_in_it(imbalanced, tmp_path):
    """Issue #17, item 2: the report of a run on one dataset showed a variant fine-tuned on another."""
    from tests.datasets import make_breakhis

    store = tmp_path / "tk.duckdb"
    other = tmp_path / "other" / "BreaKHis_v1" / "histology_slides" / "breast"
    make_breakhis(other)
    trained = tk("train", imbalanced, "--backbone", "tiny", "--plugin", TINY, "--weights", "random",
                 "--epochs", "1", "--unfreeze", "0", "--store", store)
    assert trained.exit_code == 0, trained.stderr
    for data, out in ((imbalanced, tmp_path / "same"), (other, tmp_path / "other_report")):
        ran = tk("run", data, "--backbone", "tiny", "--plugin", TINY, "--weights", "random",
                 "--analysis", "none", "--store", store, "--out", out)
        assert ran.exit_code == 0, ran.stderr
    assert 'id="training"' in next((tmp_path / "same").glob("*.html")).read_text()
    assert 'id="training"' not in next((tmp_path / "other_report").glob("*.html")).read_text()


def test_two_class_training_metrics_list_sensitivity_and_specificity_once():
    """Issue #17, item 6 (part): for two classes the report listed sensitivity and specificity of both,
    so each figure appeared twice (benign's sensitivity is malignant's specificity)."""
    import pandas as pd

    from toolkit.plugins.commands.train_report import comparison_rows

    metrics = pd.DataFrame([{"metric": m, "class": c, "value": v, "ci_low": v - 0.1, "ci_high": min(v + 0.1, 1.0)}
                            for m, c, v in (("balanced_accuracy", None, 0.8), ("sensitivity", "benign", 0.7),
                                            ("sensitivity", "malignant", 0.9), ("specificity", "benign", 0.9),
                                            ("specificity", "malignant", 0.7))])
    labels = [row["label"] for row in comparison_rows(metrics, {}, ["benign", "malignant"])]
    assert [label for label in labels if label.startswith(("Sensitivity", "Specificity"))] == [
        "Sensitivity, malignant", "Specificity, malignant"]


FLAT_BACKBONE = '''
from toolkit import hookimpl
from toolkit.plugin.types import Backbone
from tests.plugins.tiny_backbone import build as build_tiny, preprocess


def build(weights):
    import keras

    tiny = build_tiny(weights)
    return keras.Model(tiny.input, keras.layers.Rescaling(1e-7)(tiny.output), name="flat")


@hookimpl
def register_backbones(register):
    register(Backbone(name="flat", dim=16, build=build, preprocess=preprocess, input_size=(32, 32), imagenet=False))
'''


@pytest.mark.slow
def test_a_head_that_cannot_learn_is_said_so_not_reported_as_a_result(imbalanced, tmp_path):
    """Issue #17, item 6: EfficientNetB0 with random weights pools features of ~1e-6, so the head never
    leaves equal probabilities (loss ln 2 = 0.6931) and tk printed chance figures as results. A backbone
    with features scaled to ~1e-8 reproduces it in seconds: tk now warns before training (flat features)
    and after it (loss stuck at ln 2), stores both warnings and adds a caveat to the summary line."""
    plugin = tmp_path / "flat_backbone.py"
    plugin.write_text(FLAT_BACKBONE)
    store = tmp_path / "tk.duckdb"
    outcome = train(TrainSettings(data=imbalanced, store=store, **{**QUICK, "backbone": "flat",
                                                                    "plugins": [str(plugin)], "epochs": 3}))[0][0]
    assert abs(outcome.history["loss"] - np.log(2)).max() < 0.005
    assert len(outcome.warnings) == 2
    assert outcome.warnings[0].startswith("flat with random weights gives features that hardly differ")
    assert "stayed at 0.693 = ln 2" in outcome.warnings[1]
    with duckdb.connect(str(store), read_only=True) as con:
        stored = con.execute("SELECT warnings FROM training_runs").fetchone()[0]
    assert json.loads(stored) == outcome.warnings

    learning = train(TrainSettings(data=imbalanced, store=store, **{**QUICK, "epochs": 3}))[0][0]
    assert learning.warnings == [] and learning.history["loss"].iloc[-1] < np.log(2) - 0.05


@pytest.mark.slow
def test_random_efficientnetb0_features_are_too_flat_to_train_a_head():
    """The cause of issue #17, item 6, measured on the real network."""
    from tests.datasets import tile
    from toolkit.extract.weights import build_model
    from toolkit.models.learning_check import FLAT_SPREAD, probe_spread

    backbone = find_backbone(load_registry().backbones, "efficientnetb0")
    base, _ = build_model(backbone, "random", 0)
    rng = np.random.default_rng(0)
    pixels = np.stack([np.asarray(tile(rng, k % 2 == 0).resize(backbone.input_size)) for k in range(8)])
    assert probe_spread(base, backbone.preprocess, pixels) < FLAT_SPREAD / 10
