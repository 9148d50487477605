"""The ``tk`` command line (Typer): ``main`` is the console script's entry point."""

from toolkit.cli.app import main

__all__ = ["main"]
