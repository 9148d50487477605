"""tk: histopathology image embeddings, stored in DuckDB, analysed, explained, exported, reported.

Plugin authors need only this::

    from toolkit import hookimpl

    @hookimpl
    def register_analyses(register):
        register(Analysis(name="my_analysis", run=my_function))
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("tk")
"""Decorator that marks a function in a plugin module as an implementation of a tk hook."""

try:
    __version__ = version("tk-embeddings")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
