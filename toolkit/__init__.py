"""tk: histopathology image embeddings, stored in DuckDB, analysed, explained, exported, reported.

The public API for plugin authors is importable from here, from :mod:`toolkit.stats` (the
statistics kernels analyses share) and from :mod:`toolkit.testing` (the conformance kit)::

    from dataclasses import dataclass

    from toolkit import Analysis, Needs, Table, hookimpl, setting

    @dataclass(frozen=True)
    class MySettings:
        top_k: int = setting(10, "features shown in table top")

    @hookimpl
    def register_analyses(register):
        register(Analysis(name="my_analysis", run=my_function, needs=Needs(labels=True), settings=MySettings))

Built-in plugins import nothing else from tk, and neither should yours: other modules are tk's own
and change without notice. Names other than ``hookimpl`` are loaded on first use, so that
``import toolkit`` stays fast. ``docs/architecture.md`` lists every name with one line each.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("tk")
"""Decorator that marks a function in a plugin module as an implementation of a tk hook."""

try:
    __version__ = version("tk-embeddings")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_PUBLIC = {
    # plugin objects, their contexts and what they return
    "Backbone": "toolkit.plugin.types", "Analysis": "toolkit.plugin.types", "Exporter": "toolkit.plugin.types",
    "StainNormaliser": "toolkit.plugin.types", "Needs": "toolkit.plugin.types",
    "AnalysisContext": "toolkit.plugin.types", "ExportContext": "toolkit.plugin.types",
    "ExportSettings": "toolkit.plugin.types",
    "CliContext": "toolkit.plugin.types", "setting": "toolkit.plugin.settings", "Setting": "toolkit.plugin.settings",
    "Result": "toolkit.plugin.results", "Table": "toolkit.plugin.results", "Figure": "toolkit.plugin.results",
    "Finding": "toolkit.plugin.results", "SkipAnalysis": "toolkit.plugin.results",
    "patient_ref": "toolkit.plugin.results", "TableSpec": "toolkit.store.tables",
    "StoreReader": "toolkit.store.store",
    "EmbeddingSet": "toolkit.store.embeddings", "TkError": "toolkit.errors",
    "Registry": "toolkit.plugin.registry", "PLUGIN_NAME": "toolkit.plugin.registry",
    "core_table_taken_by": "toolkit.plugin.results",
    # the report
    "ReportSection": "toolkit.plugin.sections", "ReportContext": "toolkit.plugin.sections",
    "ComparisonColumn": "toolkit.plugin.sections", "PALETTE": "toolkit.analysis.figures",
    "MARKERS": "toolkit.analysis.figures", "colour_for": "toolkit.analysis.figures",
    "new_figure": "toolkit.analysis.figures", "to_svg": "toolkit.analysis.figures",
    "format_number": "toolkit.report.environment", "metric_estimate": "toolkit.report.data:estimate",
    "ReportPage": "toolkit.report.page", "report_page": "toolkit.report.page",
    "write_atomically": "toolkit.report.environment",
    # a fast start, messages, the command line
    "lazy_import": "toolkit.lazy", "console": "toolkit.console",
    "import_tensorflow": "toolkit.extract.tfimport:tensorflow",
    "PluginOption": "toolkit.cli.options", "DataArgument": "toolkit.cli.options", "StoreOption": "toolkit.cli.options",
    "WeightsOption": "toolkit.cli.options", "SourceOption": "toolkit.cli.options", "SeedOption": "toolkit.cli.options",
    "BatchSizeOption": "toolkit.cli.options",
    # models: the run's classifiers, Grad-CAM, deployment, fine-tuning
    "Classifier": "toolkit.models.classifier", "load_classifier": "toolkit.models.classifier",
    "gradcam_heatmaps": "toolkit.models.gradcam:gradcam", "gradcam_overlay_png": "toolkit.models.gradcam:overlay_png",
    "write_savedmodel": "toolkit.extract.conversion", "convert_to_tflite": "toolkit.extract.conversion:convert",
    "calibration_sample": "toolkit.extract.conversion", "LiteModel": "toolkit.extract.litert",
    "median_ms": "toolkit.extract.litert", "prediction_parity": "toolkit.extract.parity:parity",
    "parity_warning": "toolkit.extract.precision", "TrainSettings": "toolkit.models.training",
    "train": "toolkit.models.training",
    # tables tk writes that plugins read
    "TRAINING_RUNS": "toolkit.models.training_record:RUNS",
    "TRAINING_HISTORY": "toolkit.models.training_record:HISTORY",
    "TRAINING_METRICS": "toolkit.models.training_record:METRICS",
    "TRAINING_DIFFERENCES": "toolkit.models.training_record:DIFFERENCES",
    "STAIN_RUNS": "toolkit.extract.stain:RUNS",
}
"""Public name -> ``module:attribute``, or ``module`` for an attribute of the same name; ``console``
names the module ``toolkit.console`` itself."""


def _lazy_origin(name: str) -> tuple[str, str] | None:
    """The module and attribute that public name ``name`` is loaded from, or None for a name that is
    not loaded lazily. Cache keys follow it to the code behind ``from toolkit import name``."""
    target = _PUBLIC.get(name)
    if target is None:
        return None
    module, _, attribute = target.partition(":")
    return module, attribute or name


def __getattr__(name: str) -> Any:
    origin = _lazy_origin(name)
    if origin is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    module = import_module(origin[0])
    value = module if origin[0] == f"toolkit.{name}" else getattr(module, origin[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["hookimpl", "__version__", *_PUBLIC]
