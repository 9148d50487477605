"""Choosing and loading a backbone's weights: auto, imagenet, random (seeded) or a local file.

The identity of the weights (``weights_id``) keys the embedding set in the store, so different
weights never mix: ``imagenet``, ``random-seed<N>`` or ``file-<sha256 prefix>``, followed by
``-spec<fingerprint prefix>`` for a backbone with a ``fingerprint`` (an encoder's preprocessing and
pooling). A weights folder (a Keras-Hub preset, a SavedModel) is hashed file by file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import TkError
from toolkit.plugin.types import Backbone
from toolkit.ingest.scan import sha256_path
from toolkit.extract.tfimport import tensorflow

WEIGHT_CHOICES = ("auto", "imagenet", "random")


class WeightsUnavailable(TkError):
    """ImageNet weights could not be obtained (no network and nothing cached).

    :ivar reason: why, in a few words (the message also says how to fix it).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


OFFLINE_FIX = ("put the official {name} *_notop.h5 file in ~/.keras/models/ (then --weights imagenet works "
               "offline) or pass --weights PATH with a local weights file")


def shortened(text: str, limit: int = 120) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:-") + "…"


@dataclass(frozen=True)
class ResolvedWeights:
    """Which weights a model was actually built with."""

    kind: str  # "imagenet", "random" or "file"
    weights_id: str
    sha256: str | None = None
    path: str | None = None
    note: str = ""  # e.g. the fallback warning for --weights auto

    @property
    def label(self) -> str:
        if self.kind == "file":
            return f"local file {Path(self.path or '').name} (sha256 {self.sha256})"
        if self.kind == "random":
            return f"random initialisation ({self.weights_id})"
        return "ImageNet (keras.applications)"


def random_weights(seed: int) -> ResolvedWeights:
    return ResolvedWeights("random", f"random-seed{seed}")


def file_weights(path: Path, fingerprint: str = "") -> ResolvedWeights:
    """The weights of a local file or folder; ``fingerprint`` (the backbone's) joins its identity."""
    if not path.exists():
        raise TkError(f"weights file {path} does not exist; give a .h5/.weights.h5/.keras file, "
                      "or --weights auto|imagenet|random")
    sha = sha256_path(path)
    spec = f"-spec{fingerprint[:8]}" if fingerprint else ""
    return ResolvedWeights("file", f"file-{sha[:16]}{spec}", sha, str(path.resolve()))


def planned_weights(request: str, seed: int, fingerprint: str = "") -> ResolvedWeights | None:
    """The weights a request will give, when that is known without building the model."""
    if request == "random":
        return random_weights(seed)
    if request == "imagenet":
        return ResolvedWeights("imagenet", "imagenet")
    if request == "auto":
        return None
    return file_weights(Path(request).expanduser(), fingerprint)


def request_for(kind: str, weights_id: str, path: str | None) -> tuple[str, int]:
    """The ``--weights`` request and seed that rebuild a stored embedding set's weights."""
    if kind == "random":
        return "random", int(weights_id.removeprefix("random-seed") or 0)
    if kind == "file":
        if not path or not Path(path).exists():
            raise TkError(f"the weights file of the stored embeddings ({path}) is gone; restore it to embed new images")
        return path, 0
    return "imagenet", 0


def _seeded(seed: int) -> None:
    tensorflow()
    import keras

    keras.utils.set_random_seed(seed)


def build_model(backbone: Backbone, request: str, seed: int = 0) -> tuple[Any, ResolvedWeights]:
    """Build ``backbone`` with the requested weights; returns (Keras model, what was used).

    ``auto`` tries ImageNet and falls back to seeded random weights with a warning in ``note``;
    ``imagenet`` raises WeightsUnavailable when the weights cannot be had. A backbone with an
    ``extractor`` gives an ``ExternalModel`` of its weights file instead of a Keras model.
    """
    if backbone.fixed_weights and request in WEIGHT_CHOICES:  # its weights apply whatever --weights says
        request = backbone.fixed_weights
    if backbone.extractor is not None:
        return _external(backbone, request)
    tensorflow()
    if request == "random":
        _seeded(seed)
        return _checked(backbone, backbone.build(None)), random_weights(seed)
    if request in ("imagenet", "auto"):
        try:
            return _checked(backbone, _build_imagenet(backbone)), ResolvedWeights("imagenet", "imagenet")
        except WeightsUnavailable as exc:
            if request == "imagenet":
                raise
            _seeded(seed)
            note = (f"ImageNet weights for {backbone.name} are unavailable ({exc.reason}); "
                    f"using RANDOM weights (seed {seed}). Embeddings and statistics do not reflect a "
                    f"pretrained network. For real results, {OFFLINE_FIX.format(name=backbone.name)}.")
            resolved = random_weights(seed)
            return _checked(backbone, backbone.build(None)), ResolvedWeights(
                resolved.kind, resolved.weights_id, note=note)
    resolved = file_weights(Path(request).expanduser(), backbone.fingerprint)
    if request.endswith(".keras"):
        import keras

        model = keras.saving.load_model(resolved.path, compile=False)
    else:
        try:
            model = backbone.build(resolved.path)
        except (ValueError, OSError) as exc:
            raise TkError(f"weights file {request} does not fit {backbone.name}: {str(exc).splitlines()[0]}; "
                          "give the notop weights of this architecture") from exc
    return _checked(backbone, model), resolved


def _external(backbone: Backbone, request: str) -> tuple[Any, ResolvedWeights]:
    """The ExternalModel of ``backbone``'s weights file, checked on one blank image."""
    import numpy as np

    from toolkit.extract.external import ExternalModel, external_extractor

    if request in WEIGHT_CHOICES:
        raise TkError(f"backbone {backbone.name} runs a weights file and names none; --weights {request} "
                      "does not apply to it")
    resolved = file_weights(Path(request).expanduser(), backbone.fingerprint)
    model = ExternalModel(backbone.name, backbone.extractor(resolved.path))
    external_extractor(backbone, model)(np.zeros((1, *backbone.input_size, 3), np.uint8))  # its dim, before any image
    return model, resolved


def _build_imagenet(backbone: Backbone) -> Any:
    if not backbone.imagenet:
        raise WeightsUnavailable(f"{backbone.name} has no ImageNet weights")
    try:
        return backbone.build("imagenet")
    except Exception as exc:  # Keras raises plain Exception subclasses for download failures
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if any(word in text.lower() for word in ("url", "fetch", "download", "connect", "resolve", "network", "http")):
            reason = f"download failed: {shortened(text)}"
            raise WeightsUnavailable(f"ImageNet weights for {backbone.name} could not be downloaded (offline?); "
                                     f"{OFFLINE_FIX.format(name=backbone.name)} ({reason})", reason) from exc
        raise


def _checked(backbone: Backbone, model: Any) -> Any:
    shape = tuple(model.output_shape)
    if len(shape) != 2 or shape[-1] != backbone.dim:
        raise TkError(f"backbone {backbone.name} declares dim {backbone.dim} but its model outputs "
                      f"shape {shape}; fix the plugin's dim or its pooling")
    return model
