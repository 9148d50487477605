"""What plugins contribute to the HTML report: sections in named places, and columns of the
backbone comparison table. Every built-in analysis and exporter contributes this way, so a
third-party section looks like a built-in's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from toolkit.plugin.registry import Registry
    from toolkit.plugin.results import Figure, Table
    from toolkit.store import StoreReader

SLOTS = ("summary", "comparison", "models", "dataset", "appendix")
"""Where a section goes: ``summary`` (after the summary's first paragraph), ``comparison`` (below
the backbone comparison table), ``models`` (own sections before the per-backbone results, e.g.
fine-tuned or exported models), ``dataset`` (inside the Dataset section), ``appendix`` (own
sections after the per-backbone results)."""


@dataclass
class ComparisonColumn:
    """A column of the report's backbone comparison table.

    :param header: the column heading.
    :param values: backbone name -> a number, a text, or an estimate with its 95% interval
        ``{"value": v, "low": l, "high": h}``; backbones without a value show a dash.
    :param best: the backbone this column names best (its row is highlighted), if any.
    :param note: one sentence under the table saying what the column means.
    :param order: place among the columns (smaller first).
    :param css: an extra CSS class for the cells (``leaky`` greys them out).
    """

    header: str
    values: dict[str, Any]
    best: str | None = None
    note: str = ""
    order: int = 100
    css: str = ""


@dataclass
class ReportSection:
    """A part of the HTML report contributed by a plugin through ``report_sections``.

    Text is escaped (no HTML); tables show their first rows; figures are embedded like analysis
    figures. A section with a ``template`` is rendered by that Jinja template file instead
    (autoescape on, ``macros.html`` importable, its ``data`` as variables, ``section`` for itself).

    :param title: heading (sections in ``summary`` and ``comparison`` may leave it empty).
    :param slot: one of :data:`SLOTS`.
    :param order: place within the slot (smaller first).
    :param anchor: the section's HTML id (``models`` and ``appendix`` sections get one from the
        title when not given) and its link in the table of contents.
    :param columns: columns for the backbone comparison table (a section may hold only columns).
    :param reads: the analyses of other plugins whose stored results the section shows, as
        ``Needs.analyses`` declares them for an analysis. Report sections are rendered after every
        analysis has run, so a read analysis that did not run leaves its part out; nothing waits
        for it or is skipped.
    """

    title: str = ""
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    slot: str = "appendix"
    order: int = 100
    anchor: str | None = None
    template: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    columns: list[ComparisonColumn] = field(default_factory=list)
    reads: tuple[str, ...] = ()

    @classmethod
    def comparison_columns(cls, *columns: ComparisonColumn) -> ReportSection:
        """A section that only adds columns to the backbone comparison table."""
        return cls(slot="comparison", columns=list(columns))


@dataclass
class ReportContext:
    """What ``report_sections`` implementations read.

    :ivar run: the run's row (run_id, status, command, settings, versions, warnings, ...).
    :ivar backbones: one dict per backbone of the run (the ``run_backbones`` columns).
    :ivar store: the store, to read (a ``toolkit.store.StoreReader``: it has no method that writes).
    :ivar registry: every loaded plugin.
    :ivar pseudonym: maps a patient id to what the report may show (a pseudonym unless ids are
        revealed).
    """

    run_id: str
    store: StoreReader
    registry: Registry
    run: dict[str, Any]
    backbones: list[dict[str, Any]]
    pseudonym: Callable[[Any], str] = str

    @property
    def backbone_names(self) -> list[str]:
        return [b["backbone"] for b in self.backbones]
