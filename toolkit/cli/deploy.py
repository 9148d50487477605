"""Commands around a backbone + probe-head classifier: ``tk export`` (TFLite, SavedModel),
``tk explain`` (a Grad-CAM overlay) and ``tk predict`` (an exported model on new images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List

import typer

from toolkit.cli.options import (DEFAULT_EXPLANATIONS, DEFAULT_STORE, ExplanationsOption, PluginOption, RunIdOption,
                                 SeedOption, StoreOption, names)
from toolkit.cli.output import print_fields, print_table, warn_notes


def export(
    context: typer.Context,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose classifier to export.")],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="tflite | tflite-fp16 | tflite-dynamic | tflite-int8 | savedmodel (comma list "
                               "allowed).")] = "tflite",
    run_id: RunIdOption = None,
    store: StoreOption = DEFAULT_STORE,
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported models.")] = Path("exports"),
    seed: SeedOption = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON document: the files and every table row.")] = False,
    plugin: PluginOption = None,
) -> None:
    """Export a backbone + probe-head classifier, with size, latency and parity numbers."""
    from toolkit import console
    from toolkit.plugin.types import ExportContext, ExportSettings
    from toolkit.run.exports import ExportEscape, export_into
    from toolkit.run.settings import EXIT_PARTIAL, check_out_folder, select
    from toolkit.store import Store

    registry = context.obj.registry
    exporters = select(registry.exporters, names(fmt), "exporter")
    check_out_folder(out)
    escaped, files = False, []
    with Store.open(store, must_exist=True) as opened:  # records the exports' parity
        export_context = ExportContext(opened.runs.run(run_id)["run_id"], opened, ExportSettings(backbones=(backbone,), seed=seed),
                                       registry=registry)
        for exporter in exporters:
            try:
                files += [str(path) for path in export_into(exporter, export_context, out, opened)]
            except ExportEscape as exc:
                console.error(f"exporter {exporter.name}: {exc}")
                escaped = True
        tables = {spec.name: spec for exporter in exporters for spec in exporter.tables}
        rows = {name: opened.tables.rows(spec, where={"run_id": export_context.run_id, "backbone": backbone})
                for name, spec in tables.items()}
    if as_json:
        print(json.dumps({"files": files, **{name: frame.to_dict("records") for name, frame in rows.items()}},
                         default=str))
    else:
        print("\n".join(files))
        for name, frame in rows.items():
            if not frame.empty:
                print_table(frame[list(tables[name].summary or tables[name].columns)], "table")
    if escaped:
        raise typer.Exit(EXIT_PARTIAL)


def explain(
    context: typer.Context,
    image: Annotated[Path, typer.Argument(help="Image to explain.")],
    backbone: Annotated[str, typer.Option("--backbone", "-b")],
    run_id: RunIdOption = None,
    store: StoreOption = DEFAULT_STORE,
    out: ExplanationsOption = DEFAULT_EXPLANATIONS,
    plugin: PluginOption = None,
) -> None:
    """Grad-CAM overlay of the backbone + probe-head classifier for one image."""
    from toolkit.models.classifier import load_classifier
    from toolkit.models.explain import explain as explain_image
    from toolkit.store import Store

    with Store.open(store, read_only=True) as opened:
        classifier = load_classifier(opened, context.obj.registry, backbone, run_id)
    prediction = explain_image(classifier, image, out)
    print_fields(prediction.overlay, prediction.label, f"{prediction.probability:.3f}",
                 f"{prediction.weights_kind} weights")
    warn_notes([prediction])


def predict(
    context: typer.Context,
    images: Annotated[List[Path], typer.Argument(help="Images to classify.")],
    model: Annotated[Path, typer.Option(
        "--model", help="An exported .tflite file or SavedModel version folder.")],
    explain_with: Annotated[bool, typer.Option(
        "--explain", help="Also write Grad-CAM overlays from the Keras model (needs the store).")] = False,
    store: StoreOption = DEFAULT_STORE,
    out: ExplanationsOption = DEFAULT_EXPLANATIONS,
    plugin: PluginOption = None,
) -> None:
    """Classify images with an exported model: class, probability and latency."""
    from toolkit.models.explain import predict as predict_images

    registry = context.obj.registry
    print("image\tclass\tprobability\tlatency_ms\tweights")
    predictions = predict_images(model, images, registry)
    for p in predictions:
        print_fields(p.image, p.label, f"{p.probability:.4f}", f"{p.latency_ms:.1f}", p.weights_kind)
    warn_notes(predictions)
    if explain_with:
        from toolkit.models.classifier import load_classifier
        from toolkit.models.explain import explain as explain_image, load_exported
        from toolkit.store import Store

        meta = load_exported(model)[1]
        with Store.open(store, read_only=True) as opened:
            classifier = load_classifier(opened, registry, meta["backbone"], meta["run_id"])
        for image in images:
            print_fields(explain_image(classifier, image, out).overlay)
