"""Where messages go: warnings and progress to stderr, one line each; results to stdout."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    stderr.print(escape(message))


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    stderr.print(f"[red]error:[/red] {escape(message)}")


@contextmanager
def progress(description: str, total: int, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A progress bar with a rate in ``unit``/s; yields ``advance(n)``. Keep ``description`` to a word
    or two: with a 20-character bar, count, rate, elapsed time and ETA fit in 80 columns."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                   TextColumn(f"{{task.fields[rate]}} {unit}/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False)
    with bar:
        task = bar.add_task(escape(description), total=total, rate="  —")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:6.1f}" if speed else "  —")

        yield advance
