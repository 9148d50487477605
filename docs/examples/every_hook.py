"""One plugin file that implements every tk hook; docs/hooks.md quotes it and the tests load it.

Load it with ``tk plugins --plugin docs/examples/every_hook.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit import (Analysis, AnalysisContext, Backbone, ExportContext, Exporter, Finding, Needs, ReportSection, Result,
                     StainNormaliser, Table, hookimpl)

__version__ = "1.0.0"


def build_shallow(weights):
    """A two-layer convolutional network, 8-d pooled output (random weights only)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="last_conv")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="shallow")


def scale(batch):
    """0..255 to 0..1 (a new array; the input is left alone)."""
    return batch / 255.0


@hookimpl
def register_backbones(register):
    register(Backbone(name="shallow", dim=8, build=build_shallow, preprocess=scale, input_size=(32, 32),
                      gradcam_layer="last_conv", imagenet=False, description="example backbone"))


def feature_spread(context: AnalysisContext) -> list[Result]:
    """Standard deviation of every embedding feature (table ``main``) and the widest one."""
    spread = np.asarray(context.embeddings).std(axis=0)
    widest = int(spread.argmax())
    return [Table("main", pd.DataFrame({"feature": np.arange(len(spread)), "std": spread})),
            Finding(f"feature {widest} varies most (std {spread[widest]:.3g})")]


@hookimpl
def register_analyses(register):
    register(Analysis(name="feature_spread", run=feature_spread, needs=Needs(min_samples=2),
                      title="Feature spread"))


def write_status(context: ExportContext, out_dir: Path) -> list[Path]:
    """``<run>-status.json``: the status of every analysis of the run."""
    rows = sorted(context.store.results.run_analyses(context.run_id), key=lambda r: (r["analysis"], r["backbone"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{context.run_id}-status.json"
    path.write_text(json.dumps(rows, indent=2))
    return [path]


@hookimpl
def register_exporters(register):
    register(Exporter(name="status_json", export=write_status, description="Analysis statuses as JSON"))


def fit_brightness(reference: np.ndarray) -> dict:
    """The reference's mean grey level per channel."""
    return {"mean": np.asarray(reference, dtype=float).reshape(-1, 3).mean(axis=0).tolist()}


def apply_brightness(batch: np.ndarray, state: dict) -> np.ndarray:
    """Shift each image's channel means onto the reference's; a flat (blank) image comes back unchanged."""
    batch = np.asarray(batch, dtype=np.float32)
    flat = batch.std(axis=(1, 2, 3)) < 1e-3
    shifted = batch - batch.mean(axis=(1, 2), keepdims=True) + np.asarray(state["mean"], np.float32)
    return np.where(flat[:, None, None, None], batch, np.clip(shifted, 0, 255))


@hookimpl
def register_stain_normalisers(register):
    register(StainNormaliser(name="brightness", fit=fit_brightness, apply=apply_brightness,
                             default_state={"mean": [200.0, 160.0, 190.0]},
                             description="Channel means matched to a reference"))


@hookimpl
def register_commands(app):
    @app.command()
    def hello(name: str):
        """Greet NAME (an example command)."""
        print(f"hello {name}")


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["shout"] = lambda text: str(text).upper() + "!"


@hookimpl
def report_sections(context):
    n_images = context.store.images.run_image_count(context.run_id)
    return [ReportSection("Lab notes", paragraphs=[f"{n_images} images were scanned in our lab."])]
