"""tk: histopathology image embeddings, stored in DuckDB, analysed, explained, exported, reported.

The public API for plugin authors is importable from here::

    from dataclasses import dataclass

    from toolkit import Analysis, Needs, Table, hookimpl, setting

    @dataclass(frozen=True)
    class MySettings:
        top_k: int = setting(10, "features shown in table top")

    @hookimpl
    def register_analyses(register):
        register(Analysis(name="my_analysis", run=my_function, needs=Needs(labels=True), settings=MySettings))

Names other than ``hookimpl`` are loaded on first use, so that ``import toolkit`` stays fast.
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
    "Backbone": "toolkit.plugin.types", "Analysis": "toolkit.plugin.types", "Exporter": "toolkit.plugin.types",
    "Needs": "toolkit.plugin.types", "AnalysisContext": "toolkit.plugin.types",
    "ExportContext": "toolkit.plugin.types", "CliContext": "toolkit.plugin.types",
    "StainNormaliser": "toolkit.plugin.types",
    "ReportSection": "toolkit.plugin.sections", "ReportContext": "toolkit.plugin.sections",
    "ComparisonColumn": "toolkit.plugin.sections", "TableSpec": "toolkit.store.tables",
    "setting": "toolkit.plugin.settings", "Setting": "toolkit.plugin.settings",
    "Table": "toolkit.plugin.results", "Figure": "toolkit.plugin.results", "Finding": "toolkit.plugin.results",
    "Result": "toolkit.plugin.results", "SkipAnalysis": "toolkit.plugin.results",
    "TkError": "toolkit.errors",
    "PluginOption": "toolkit.cli.options", "DataArgument": "toolkit.cli.options", "StoreOption": "toolkit.cli.options",
    "WeightsOption": "toolkit.cli.options", "SourceOption": "toolkit.cli.options", "SeedOption": "toolkit.cli.options",
    "BatchSizeOption": "toolkit.cli.options",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["hookimpl", "__version__", *_PUBLIC]
