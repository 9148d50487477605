"""TFLite classifiers (LiteRT): fp32, fp16, dynamic-range and full-integer int8, each with its size,
latency and parity against the Keras model written next to it and stored in ``export_parity``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from toolkit import ExportContext, Exporter, LiteModel, convert_to_tflite, hookimpl, write_savedmodel
from toolkit.plugins.exporters.parity import PARITY, classifiers, measure, sample_pixels, write_json

VARIANTS = {
    "tflite": "fp32",
    "tflite-fp16": "fp16",
    "tflite-dynamic": "dynamic",
    "tflite-int8": "int8",
}


def make_export(variant: str) -> Callable[[ExportContext, Path], list[Path]]:
    """The export function of one variant."""

    def export(context: ExportContext, out_dir: Path) -> list[Path]:
        written = []
        for classifier in classifiers(context):
            calibration, held_out = sample_pixels(context, classifier.backbone.input_size)
            folder = out_dir / "tflite" / classifier.backbone.name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{classifier.backbone.name}-{variant}.tflite"
            with tempfile.TemporaryDirectory() as tmp:
                path.write_bytes(convert_to_tflite(write_savedmodel(classifier.backbone, classifier.model, Path(tmp) / "model"), variant,
                                         calibration))
            lite = LiteModel(path)
            input_type = "uint8 RGB 0..255" if variant == "int8" else "float32 RGB 0..255"
            row = measure(context, classifier, lite, _format(variant), path, input_type, held_out)
            written += [path, write_json(path.with_suffix(".json"), {**classifier.metadata(), "variant": variant,
                                                                    "input_type": input_type, "parity": row})]
        return written

    return export


def _format(variant: str) -> str:
    return next(name for name, v in VARIANTS.items() if v == variant)


@hookimpl
def register_exporters(register: Any) -> None:
    """Register ``tflite``, ``tflite-fp16``, ``tflite-dynamic`` and ``tflite-int8``."""
    for name, variant in VARIANTS.items():
        register(Exporter(name=name, export=make_export(variant),
                          description=f"TFLite classifier ({variant}) with size, latency and parity",
                          tables=(PARITY,)))
