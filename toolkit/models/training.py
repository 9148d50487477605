"""``tk train``: fine-tune a backbone with a softmax head, evaluated on held-out patients.

The model is ``augmentation (training only) -> backbone preprocessing -> backbone (pooled) ->
dropout -> softmax``. Training runs in two phases: ``head`` with the backbone frozen, then, when
``unfreeze`` > 0, ``finetune`` with the top ``unfreeze`` weight-bearing layers of the backbone
trainable (BatchNormalization layers stay frozen and in inference mode) at a tenth of the learning
rate. Validation holds out whole patients; each phase stops early when the validation loss has not
improved for ``patience`` epochs, and the weights of the best epoch are kept. The fine-tuned
backbone (the flat graph up to the pooled output) is saved as ``.keras`` and becomes the backbone
variant ``<backbone>@<train_id>`` (toolkit.models.variants).
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit import console
from toolkit.analysis.evaluation import OutOfFold, metric_rows, probe_metrics
from toolkit.analysis.stats import group_codes
from toolkit.errors import TkError
from toolkit.ingest.scan import sha256_file
from toolkit.models.ablation import ABLATION, ablation_table
from toolkit.models.augmentation import augmentation
from toolkit.models.learning_check import chance_loss_warning, flat_features_warning, probe_spread
from toolkit.models.training_data import TrainingData, class_weights, load_training_data, oversampled
from toolkit.models.training_record import record_differences, record_failure, record_start, record_success
from toolkit.models.variants import VariantInfo, find_backbone, model_path, register_variant, variant_name
from toolkit.plugin.types import Backbone

BALANCE_MODES = ("weights", "oversample", "none")
FINETUNE_LR_FACTOR = 0.1
PROBED_IMAGES = 16  # training images whose features are checked for spread before training


@dataclass
class TrainSettings:
    """Everything ``tk train`` was asked to do."""

    data: Path | None = None
    backbone: str = "efficientnetb0"
    weights: str = "auto"
    store: Path = Path("tk.duckdb")
    plugins: list[str] = field(default_factory=list)
    source: str = "auto"
    augment: bool = False
    balance: str = "weights"
    epochs: int = 5
    unfreeze: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 16
    dropout: float = 0.2
    val_fraction: float = 0.25
    patience: int = 2
    seed: int = 0
    n_bootstrap: int = 1000


@dataclass
class TrainOutcome:
    """One finished training run: its id, variant name, held-out predictions and stored metrics."""

    train_id: str
    variant: str
    settings: TrainSettings
    oof: OutOfFold
    val_patients: np.ndarray  # codes 0..k-1 of the held-out patients, aligned with oof
    history: pd.DataFrame
    metrics: pd.DataFrame
    model_path: Path
    warnings: list[str] = field(default_factory=list)


def new_train_id(prefix: str = "t") -> str:
    """A short, filesystem- and SQL-safe id, e.g. ``t20261125-180112-ab12`` (UTC date and time).

    No upper-case letter: the id names a backbone variant (``densenet201@t20261125-180112-ab12``),
    and backbone names are lower case."""
    return datetime.now(timezone.utc).strftime(f"{prefix}%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


# --- data -------------------------------------------------------------------------------------

def _datasets(data: TrainingData, settings: TrainSettings) -> tuple[Any, Any, int]:
    """tf.data training set (x, y, sample weight) shuffled per epoch, validation images, and the
    number of training images per epoch."""
    import tensorflow as tf

    train = np.flatnonzero(~data.val)
    weights = np.ones(len(data.classes), np.float32)
    if settings.balance == "weights":
        weights = class_weights(data.y[train], len(data.classes)).astype(np.float32)
    elif settings.balance == "oversample":
        train = oversampled(train, data.y, settings.seed)
    pixels = tf.constant(data.pixels)
    y = tf.constant(data.y, tf.int32)
    w = tf.constant(weights)

    def gather(index: Any) -> tuple[Any, Any, Any]:
        labels = tf.gather(y, index)
        return tf.cast(tf.gather(pixels, index), tf.float32), labels, tf.gather(w, labels)

    dataset = (tf.data.Dataset.from_tensor_slices(train.astype(np.int64))
               .shuffle(len(train), seed=settings.seed, reshuffle_each_iteration=True)
               .batch(settings.batch_size).map(gather).prefetch(2))
    val_x = tf.data.Dataset.from_tensor_slices(np.flatnonzero(data.val)).batch(settings.batch_size).map(
        lambda index: tf.cast(tf.gather(pixels, index), tf.float32))
    return dataset, val_x, len(train)


# --- model ------------------------------------------------------------------------------------

def classifier_model(backbone: Backbone, base: Any, n_classes: int, settings: TrainSettings) -> Any:
    """Raw RGB (0..255) -> [augmentation] -> preprocessing -> frozen-BN backbone -> dropout -> softmax."""
    import keras

    height, width = backbone.input_size
    inputs = keras.Input((height, width, 3), name="pixels")
    x = augmentation(settings.seed)(inputs) if settings.augment else inputs
    x = keras.layers.Lambda(backbone.preprocess, name="preprocess")(x)
    x = base(x, training=False)  # BatchNormalization stays in inference mode while fine-tuning
    x = keras.layers.Dropout(settings.dropout, seed=settings.seed, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{base.name}_finetune")


def unfreeze_top(base: Any, k: int) -> int:
    """Make the top ``k`` weight-bearing, non-BatchNormalization layers of ``base`` trainable and
    every other layer frozen; returns how many were unfrozen."""
    import keras

    base.trainable = True
    weighted = [layer for layer in base.layers
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    top = {id(layer) for layer in weighted[len(weighted) - k:]} if k > 0 else set()
    for layer in base.layers:
        layer.trainable = id(layer) in top
    return len(top)


# --- one training run -------------------------------------------------------------------------

def _cross_entropy(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0))))


def _epoch_recorder(evaluate: Callable[[], tuple[float, dict[str, float]]], n_images: int,
                    batch_size: int) -> Any:
    """A Keras callback: a progress bar per epoch, held-out metrics per epoch (injected into the
    logs as ``val_loss`` for early stopping) and the best weights across both phases."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, Any]] = []
            self.best_loss, self.best_weights = np.inf, None
            self.phase, self.epochs, self._stack = "head", 0, ExitStack()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._started, self._done = time.perf_counter(), 0
            self._advance = self._stack.enter_context(
                console.progress(f"{self.phase} epoch {epoch + 1}/{self.epochs}", n_images))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            step = min(batch_size, n_images - self._done)
            self._done += step
            self._advance(step)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self._stack.close()
            logs = logs if logs is not None else {}
            val_loss, metrics = evaluate()
            logs["val_loss"] = val_loss
            if val_loss < self.best_loss:
                self.best_loss, self.best_weights = val_loss, self.model.get_weights()
            self.rows.append({"epoch": len(self.rows) + 1, "phase": self.phase, "loss": logs.get("loss"),
                              "accuracy": logs.get("accuracy"), "val_loss": val_loss, **metrics,
                              "learning_rate": float(np.asarray(self.model.optimizer.learning_rate)),
                              "seconds": time.perf_counter() - self._started})
            console.info(f"{self.phase} epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}, "
                         f"held-out loss {val_loss:.4f}, held-out balanced accuracy "
                         f"{metrics['val_balanced_accuracy']:.3f}")

    return EpochRecorder()


def _fit_phases(model: Any, base: Any, train: Any, n_images: int, evaluate: Callable, settings: TrainSettings) -> Any:
    """Train the head, then (``unfreeze`` > 0) the top of the backbone; restores the best epoch's weights."""
    import keras

    recorder = _epoch_recorder(evaluate, n_images, settings.batch_size)
    phases = [("head", 0, settings.learning_rate)]
    if settings.unfreeze > 0:
        phases.append(("finetune", settings.unfreeze, settings.learning_rate * FINETUNE_LR_FACTOR))
    for phase, k, rate in phases:
        if k:
            console.info(f"unfroze the top {unfreeze_top(base, k)} weight layers of {base.name}")
        else:
            base.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=False)
        recorder.phase, recorder.epochs = phase, settings.epochs
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience)
        model.fit(train, epochs=settings.epochs, callbacks=[recorder, stop], shuffle=False, verbose=0)
        if recorder.best_weights is not None:
            model.set_weights(recorder.best_weights)
    return recorder


def _seed_everything(seed: int) -> None:
    from toolkit.extract.tfimport import tensorflow

    tf = tensorflow()  # the first TensorFlow import of tk train: quiet
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_one(store_path: Path, backbone: Backbone, data: TrainingData, settings: TrainSettings,
              ablation_id: str | None = None) -> TrainOutcome:
    """Train, evaluate on held-out patients, save and register one variant; every step is stored."""
    from toolkit.extract.external import require_keras
    from toolkit.extract.weights import build_model

    train_id = new_train_id()
    name = variant_name(backbone.name, train_id)
    record_start(store_path, train_id, backbone.name, name, ablation_id, settings, data.classes,
                 data.dataset_fingerprint)
    try:
        _seed_everything(settings.seed)
        base, resolved = build_model(backbone, settings.weights, settings.seed)
        require_keras(backbone, base, "tk train")
        if resolved.note:
            console.warn(resolved.note)
        spread = probe_spread(base, backbone.preprocess, data.pixels[np.flatnonzero(~data.val)[:PROBED_IMAGES]])
        warnings = [w for w in [flat_features_warning(backbone.name, resolved.kind, spread)] if w]
        for warning in warnings:
            console.warn(warning)
        model = classifier_model(backbone, base, len(data.classes), settings)
        train, val_x, n_images = _datasets(data, settings)
        val_patients, _ = group_codes(pd.Series(data.patients[data.val]))
        y_val = data.y[data.val]

        def held_out() -> OutOfFold:
            proba = model.predict(val_x, verbose=0)
            return OutOfFold("label", "patient", data.classes, y_val, proba.astype(np.float64), 1)

        def evaluate() -> tuple[float, dict[str, float]]:
            oof = held_out()
            point = probe_metrics(oof, val_patients, np.ones((1, int(val_patients.max()) + 1)))
            return _cross_entropy(oof.proba, y_val), {
                "val_accuracy": float(point["accuracy"][0]),
                "val_balanced_accuracy": float(point["balanced_accuracy"][0]),
                "val_roc_auc": float(point["roc_auc"][0])}

        console.info(f"training {name} on {int((~data.val).sum())} images of "
                     f"{len(np.unique(data.patients[~data.val]))} patients ({n_images} per epoch, balance "
                     f"{settings.balance}); held out: {int(data.val.sum())} images of "
                     f"{len(np.unique(val_patients))} patients")
        recorder = _fit_phases(model, base, train, n_images, evaluate, settings)
        stuck = chance_loss_warning([row["loss"] for row in recorder.rows], len(data.classes))
        if stuck:
            console.warn(stuck)
            warnings.append(stuck)
        oof = held_out()
        metrics = metric_rows(oof, val_patients, settings.n_bootstrap, settings.seed, every_class=True)
        path = model_path(store_path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        base.trainable = True  # saved as an ordinary backbone: no layer left frozen by the last phase
        base.save(path)
        sha = sha256_file(path)
        register_variant(VariantInfo(name, backbone.name, train_id, str(path), sha, resolved.kind, backbone.dim))
    except BaseException as exc:
        record_failure(store_path, train_id, f"{type(exc).__name__}: {exc}")
        raise
    history = pd.DataFrame(recorder.rows)
    train = ~data.val
    record_success(store_path, train_id, {
        "base_weights_id": resolved.weights_id, "base_weights_kind": resolved.kind, "model_path": str(path),
        "model_sha256": sha, "n_train_images": int(train.sum()), "n_val_images": int(data.val.sum()),
        "n_train_patients": len(np.unique(data.patients[train])),
        "n_val_patients": len(np.unique(data.patients[data.val])), "warnings": json.dumps(warnings)},
        history, metrics)
    return TrainOutcome(train_id, name, settings, oof, val_patients, history, metrics, path, warnings)


def train(settings: TrainSettings, ablation: bool = False) -> tuple[list[TrainOutcome], pd.DataFrame | None]:
    """Run one training (or the four ablation runs on the same split and seed); returns the outcomes
    and, for the ablation, the paired differences (also stored in ``training_differences``)."""
    from toolkit.plugin.registry import load_registry

    if settings.balance not in BALANCE_MODES:
        raise TkError(f"--balance {settings.balance!r} is not one of {', '.join(BALANCE_MODES)}")
    if settings.epochs < 1 or settings.unfreeze < 0:
        raise TkError("--epochs must be at least 1 and --unfreeze at least 0")
    backbone = find_backbone(load_registry(settings.plugins).backbones, settings.backbone)
    data = load_training_data(settings, backbone.input_size)
    if not ablation:
        return [train_one(settings.store, backbone, data, settings)], None
    ablation_id = new_train_id("a")
    outcomes = []
    for augment, balance in ABLATION:
        console.info(f"ablation {ablation_id}: augment {'on' if augment else 'off'}, balance {balance}")
        outcomes.append(train_one(settings.store, backbone, data,
                                  replace(settings, augment=augment, balance=balance), ablation_id))
    table = ablation_table(outcomes, data.minority, settings.n_bootstrap, settings.seed)
    record_differences(settings.store, ablation_id, table)
    return outcomes, table
