"""Encoders loaded from local files: ONNX graphs, Keras-Hub presets and TensorFlow SavedModels.

Each encoder is a spec file in tk's config folder (``spec``), registered with ``tk encoders add``
(``commands``) and registered here as a backbone named after it, so ``tk run --backbone NAME`` (and
``all``) embeds with it. Its weights are the file itself: the file's sha256 and the spec's
fingerprint key the embedding set, so a changed file or spec never mixes with stored embeddings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit import Backbone, TkError, hookimpl
from toolkit.plugins.backbones.encoders.spec import EncoderSpec, read_spec, spec_files

if TYPE_CHECKING:
    import typer

    from toolkit import CliContext


def describe(spec: EncoderSpec) -> str:
    """One line for `tk plugins` and the report."""
    preset = f" {spec.preset}" if spec.preset else ""
    return f"{spec.kind} encoder{preset} from {Path(spec.path).name} ({spec.dim}-d, pooling {spec.pooling})"


def encoder_backbone(spec: EncoderSpec) -> Backbone:
    """The Backbone of one spec: its file is its fixed weights, its fingerprint part of the set's key."""
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)

    def preprocess(batch: Any) -> Any:  # RGB 0..255 -> [0, 1] -> (x - mean) / std; numpy or TensorFlow
        return (batch / np.float32(255.0) - mean) / std

    def weights_path(weights: str | None) -> str:  # the request is the recorded file, or nothing (the spec's)
        return spec.path if weights in (None, "auto", "imagenet", "random") else weights

    def build(weights: str | None) -> Any:
        from toolkit.plugins.backbones.encoders.runtimes import keras_model

        if spec.kind == "onnx":
            raise TkError(f"encoder {spec.name} is an ONNX graph, not a Keras model")
        return keras_model(spec, weights_path(weights))

    def extractor(weights: str | None) -> Any:
        from toolkit.plugins.backbones.encoders.runtimes import onnx_runner

        return onnx_runner(spec, weights_path(weights))

    return Backbone(name=spec.name, dim=spec.dim, build=build, preprocess=preprocess,
                    input_size=(spec.input_size, spec.input_size), imagenet=False, description=describe(spec),
                    fixed_weights=spec.path, extractor=extractor if spec.kind == "onnx" else None,
                    fingerprint=spec.fingerprint, resize=spec.resize)


@hookimpl
def register_backbones(register):
    """Register every encoder spec in tk's config folder; an invalid spec is skipped with a warning."""
    for path in spec_files():
        try:
            register(encoder_backbone(read_spec(path)))
        except TkError as exc:
            print(f"warning: {exc}; encoder skipped", file=sys.stderr)


@hookimpl
def register_commands(app: typer.Typer, cli: CliContext) -> None:
    """Add ``tk encoders add|list|remove``."""
    from toolkit.plugins.backbones.encoders.commands import encoders_app

    app.add_typer(encoders_app(cli), name="encoders")
