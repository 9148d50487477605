"""``tk plugins``: every loaded backbone, analysis, exporter and stain normaliser, and every analysis setting."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from toolkit.cli.options import PluginOption
from toolkit.cli.output import print_table


def plugins(
    context: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    plugin: PluginOption = None,
) -> None:
    """List every backbone, analysis and exporter with the plugin it came from."""
    rows = context.obj.registry.listing()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    import pandas as pd

    columns = ["name", "kind", "plugin", "source", "version"]
    print_table(pd.DataFrame(rows, columns=columns), "table")
    settings = [{"setting (tk run --set KEY=VALUE)": s["key"], "type": s["type"], "default": s["default"],
                 "help": s["help"]} for row in rows for s in row.get("settings", [])]
    if settings:
        print_table(pd.DataFrame(settings), "table")
