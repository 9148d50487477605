"""What commands print on stdout: tables (table, csv or json) and tab-separated lines, every control
character escaped so that no file name or query result can drive the terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.models.explain import Prediction


def print_table(frame: pd.DataFrame, fmt: str) -> None:
    """Print ``frame`` as csv, json or a table; control characters in names and values are escaped
    (json escapes them itself)."""
    from toolkit.console import printable

    if fmt == "csv":
        text_cell = lambda value: printable(value) if isinstance(value, str) else value  # noqa: E731
        frame.rename(columns=lambda column: printable(str(column))).map(text_cell).to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(frame.to_json(orient="records", default_handler=str))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(show_lines=False)
        for column in frame.columns:
            table.add_column(escape(printable(str(column))), overflow="fold")  # long paths wrap, never cut
        for row in frame.itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        Console().print(table)


def _cell(value: object) -> str:
    """One table cell: a float to 6 significant digits, control characters escaped, cut at 80 characters."""
    from rich.markup import escape

    from toolkit.console import printable

    text = printable(f"{value:.6g}" if isinstance(value, float) else str(value))
    return escape(text if len(text) < 80 else text[:77] + "...")


def print_fields(*fields: object) -> None:
    """One tab-separated line on stdout, control characters in each field escaped."""
    from toolkit.console import printable

    print("\t".join(printable(str(field)) for field in fields))


def warn_notes(predictions: list[Prediction]) -> None:
    """Each distinct warning of ``predictions`` (random weights) once, on stderr."""
    from toolkit import console

    for note in dict.fromkeys(p.note for p in predictions if p.note):
        console.warn(note)
