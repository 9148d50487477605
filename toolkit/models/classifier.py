"""A deployable classifier: a backbone plus the linear probe's head as a Keras Dense layer.

The head is the probe's model (standardisation + logistic regression, fitted on all images of a
run) with the standardisation folded into the Dense weights, so the Keras model maps raw pixels to
``{"embedding", "probabilities"}``. The head is built on ``base.output`` of the flat backbone graph,
so Grad-CAM can read any inner layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import TkError
from toolkit.extract import stain as stain_normalisation
from toolkit.plugin.types import Backbone
from toolkit.plugin.registry import Registry
from toolkit.store import EmbeddingSet, Store, StoreReader
from toolkit.analysis.evaluation import C_DEFAULT, SOLVER_MAX_ITER, SOLVER_TOL
from toolkit.extract.external import require_keras
from toolkit.extract.weights import build_model, request_for
from toolkit.models.variants import find_backbone


@dataclass(frozen=True)
class Head:
    """Dense weights ``(dim, n_classes)`` and bias acting on raw (unstandardised) embeddings."""

    classes: list[str]
    kernel: np.ndarray
    bias: np.ndarray

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings.astype(np.float64) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def fit_head(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> Head:
    """The probe's logistic regression on standardised embeddings, folded into one affine map."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler


    classes = sorted({str(label) for label in labels})
    if len(classes) < 2:
        raise TkError("the classifier needs at least two labels among the run's images")
    scaler = StandardScaler().fit(embeddings)
    model = LogisticRegression(C=C_DEFAULT, tol=SOLVER_TOL, max_iter=SOLVER_MAX_ITER, random_state=seed)
    model.fit(scaler.transform(embeddings), np.asarray(labels, dtype=str))
    coef, intercept = model.coef_, model.intercept_
    if len(classes) == 2:  # sigmoid(z) == softmax([0, z])
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    kernel = (coef / scaler.scale_).T
    bias = intercept - (scaler.mean_ / scaler.scale_) @ coef.T
    return Head(list(model.classes_), kernel.astype(np.float32), bias.astype(np.float32))


def build_classifier(base: Any, head: Head) -> Any:
    """Keras model: preprocessed pixels -> {"embedding", "probabilities"} on the flat backbone graph."""
    import keras

    dense = keras.layers.Dense(len(head.classes), activation="softmax", name="probabilities")
    probabilities = dense(base.output)
    dense.set_weights([head.kernel, head.bias])
    return keras.Model(base.input, {"embedding": base.output, "probabilities": probabilities},
                       name=f"{base.name}_classifier")


RANDOM_WEIGHTS_NOTE = ("the backbone's weights are random, not pretrained: these classes and probabilities only show "
                       "that the software runs, not anything about the tissue; use a run with --weights imagenet "
                       "or a weights file")


def weights_note(weights_kind: str | None) -> str | None:
    """What to say next to a prediction of a model whose backbone has ``weights_kind`` weights:
    a warning for random weights, else None."""
    return RANDOM_WEIGHTS_NOTE if weights_kind == "random" else None


@dataclass
class Classifier:
    """Everything needed to export, explain or predict with one backbone of a run."""

    backbone: Backbone
    model: Any
    head: Head
    run_id: str
    weights_id: str
    weights_kind: str
    stain: stain_normalisation.StainStep | None = None  # the normalisation of the embeddings the head was fitted on

    def metadata(self) -> dict[str, Any]:
        """What an exported model's JSON says about it (read back by ``tk predict``), with the stain
        normalisation its inputs need when the run had one."""
        height, width = self.backbone.input_size
        found = {"backbone": self.backbone.name, "classes": self.head.classes, "run_id": self.run_id,
                 "weights_id": self.weights_id, "weights_kind": self.weights_kind, "input": {"height": height, "width": width,
                                                          "channels": 3, "range": "RGB 0..255",
                                                          "resize": self.backbone.resize}}
        return {**found, "stain": stain_normalisation.describe(self.stain)} if self.stain else found

    def read(self, image: Path | str) -> np.ndarray:
        """An image file as this classifier's input: resized, and stain-normalised as its run's images were."""
        return stain_normalisation.read_normalised(Path(image), self.backbone.input_size, self.stain,
                                                   self.backbone.resize)

    def predict(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a uint8/float batch of raw RGB pixels (n, h, w, 3)."""
        import tensorflow as tf

        x = self.backbone.preprocess(tf.convert_to_tensor(pixels, tf.float32))
        return {k: v.numpy() for k, v in self.model(x, training=False).items()}


def load_classifier(store: StoreReader | Store, registry: Registry, backbone_name: str, run_id: str | None = None,
                    seed: int = 0) -> Classifier:
    """Rebuild a run's backbone with its weights and fit the head on that run's embeddings."""
    run = store.runs.run(run_id)
    row = store.runs.run_backbone(run["run_id"], backbone_name)
    if row is None:
        raise TkError(f"run {run['run_id']} has no {backbone_name} embeddings; run `tk run --backbone {backbone_name}`")
    kind, weights_id, precision, dim = row["weights_kind"], row["weights_id"], row["precision"], int(row["dim"])
    backbone = find_backbone(registry.backbones, backbone_name)
    embedding_set = EmbeddingSet(backbone_name, weights_id, dim, precision, row.get("stain") or "none")
    metadata, embeddings = store.embeddings.run_embeddings(run["run_id"], embedding_set)
    if metadata["label"].isna().any():
        raise TkError("the classifier needs a label for every image of the run")
    head = fit_head(embeddings, metadata["label"].to_numpy(), seed)
    request, weights_seed = ((backbone.fixed_weights, 0) if backbone.fixed_weights else
                             request_for(kind, weights_id, store.embeddings.weights_path(backbone_name, weights_id)))
    base, resolved = build_model(backbone, request, weights_seed)
    if resolved.weights_id != weights_id:
        raise TkError(f"{backbone_name}'s weights now resolve to {resolved.weights_id}, but run {run['run_id']} "
                      f"embedded with {weights_id}; restore that file and spec, or run again")
    require_keras(backbone, base, "a classifier (tk export, tk explain, tk predict, Grad-CAM)")
    stain = stain_normalisation.for_set(store, registry, row.get("stain") or stain_normalisation.NONE)
    return Classifier(backbone, build_classifier(base, head), head, run["run_id"], weights_id, kind, stain)
