"""Options and arguments that several ``tk`` commands take, each defined once as a Typer ``Annotated``
alias: a command writes ``store: StoreOption = DEFAULT_STORE`` and gets the same flag, help and type
as every other command. The default stays with the command, so one alias serves commands whose
defaults differ (``--batch-size`` is 32 for ``tk run``, 16 for ``tk train``).

Plugin commands use them too (``from toolkit import PluginOption``); this module imports only Typer,
so that ``tk --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Literal, Optional

import typer

DEFAULT_STORE = Path("tk.duckdb")
DEFAULT_REPORTS = Path("tk-reports")  # not reports/, which is also a source folder of the package
DEFAULT_EXPLANATIONS = Path("explanations")

PLUGIN_HELP = "Load a plugin .py file or a folder of them (repeatable; accepted by every command)."

PluginOption = Annotated[Optional[List[str]], typer.Option("--plugin", help=PLUGIN_HELP, metavar="FILE")]
"""``--plugin FILE``, shown by every command. ``main()`` takes its values off the command line before
parsing (plugins must load before the commands they add exist), so the parameter itself is always
None; a command reads the loaded plugins from its ``typer.Context``: ``context.obj`` is the
:class:`toolkit.plugin.types.CliContext`."""

DataArgument = Annotated[Optional[Path], typer.Argument(
    help="Image folder (BreakHis tree or one folder per class) or CSV manifest. Omit for the bundled demo.")]
StoreOption = Annotated[Path, typer.Option("--store", help="DuckDB file that keeps every embedding and result.")]
ReportsOption = Annotated[Path, typer.Option("--out", help="Folder for the report and other exports.")]
WeightsOption = Annotated[str, typer.Option(
    "--weights", "-w", help="auto | imagenet | random | PATH to a local weights file.")]
SourceOption = Annotated[str, typer.Option("--source", help="auto | breakhis | folders | manifest.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for random weights and analyses.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
RevealIdsOption = Annotated[bool, typer.Option("--reveal-ids", help="Show real patient ids in the report.")]
TemplateDirOption = Annotated[Optional[Path], typer.Option(
    "--template-dir", help="Folder of report templates overriding the built-ins.")]
RunIdOption = Annotated[Optional[str], typer.Option(
    "--run", help="Run whose embeddings train the head (default: the latest finished run).")]
FormatOption = Annotated[str, typer.Option("--format", help="table | csv | json")]
ExplanationsOption = Annotated[Path, typer.Option("--out", help="Folder for the overlay PNGs.")]


def names(text: str) -> list[str] | Literal["all"]:
    """A comma list of names as a list (blanks dropped, order kept), or ``all``."""
    if text.strip() == "all":
        return "all"
    return [name.strip() for name in text.split(",") if name.strip()]
