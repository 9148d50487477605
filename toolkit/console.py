"""Where messages go: warnings and progress to stderr, one line each; results to stdout.

Every line is passed through :func:`printable` first, so that a hostile file name (ANSI or OSC
escape sequences, newlines) can neither drive the terminal nor split a warning into several lines.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xdc00 if code >= 0xdc80 else code:02x}"  # a surrogate escape shows its original byte


def printable(text: str) -> str:
    """``text`` with C0 and C1 control characters (newlines, ESC, DEL...) and undecodable file-name bytes
    written as ``\\x1b``-style escapes: safe to show on a terminal, and always one line."""
    return _UNPRINTABLE.sub(_escaped, text)


def info(message: str) -> None:
    stderr.print(escape(printable(message)))


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(printable(message))}")


def error(message: str) -> None:
    stderr.print(f"[red]error:[/red] {escape(printable(message))}")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for tk: one ``warning:`` line naming the kind and where it arose, instead
    of Python's two raw lines (path, message, then the source line)."""
    warn(f"{category.__name__} at {Path(filename).name}:{lineno}: {message}")


def route_warnings() -> None:
    """Say every Python warning (numpy's RuntimeWarnings, a library's deprecations) as one console line."""
    warnings.showwarning = _show_warning


@contextmanager
def progress(description: str, total: int, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A progress bar with a rate in ``unit``/s; yields ``advance(n)``. Keep ``description`` to a word
    or two: with a 20-character bar, count, rate, elapsed time and ETA fit in 80 columns."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                   TextColumn(f"{{task.fields[rate]}} {unit}/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False)
    with bar:
        task = bar.add_task(escape(printable(description)), total=total, rate="  —")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:6.1f}" if speed else "  —")

        yield advance
