"""What analyses return: tables, figures and findings, and the check that a result is well formed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

if TYPE_CHECKING:  # pandas is imported where a table is made or checked, so plugins load fast
    import pandas as pd

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")  # \Z, not `$`, which accepts a final newline


PATIENT_REF = "\u27e6patient:{}\u27e7"
"""How ``patient_ref`` marks a patient id in text: ``⟦patient:12⟧``."""


def patient_ref(patient_id: object) -> str:
    """A patient id as an analysis writes it in free text (a finding, a caption, alt text, a table cell
    outside a ``patient_id`` column): the report shows its pseudonym, or the id itself with
    ``--reveal-ids``, whatever its length. The store keeps the mark (``⟦patient:12⟧``). Ids that are
    not marked are found in free text only when longer than 3 digits (a short one cannot be told from a
    count), so mark every id you write: ``Finding(f"{patient_ref(pid)} has images under two labels")``."""
    return PATIENT_REF.format(patient_id)


class SkipAnalysis(Exception):
    """Raise inside an analysis when the data cannot support it; the reason is stored and shown."""


class MalformedResult(Exception):
    """An analysis returned something that is not a list of Table, Figure and Finding."""


@dataclass
class Table:
    """A tidy table. Stored as ``results_<analysis>_<name>`` (or ``results_<analysis>`` for ``main``).

    ``run_id`` and ``backbone`` columns are added by the store; do not include them.
    """

    name: str
    data: pd.DataFrame
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            import pandas as pd

            self.data = pd.DataFrame(self.data)


@dataclass
class Figure:
    """A figure for the report: an SVG document (text) or PNG bytes, with alt text for readers."""

    name: str
    content: str | bytes
    alt: str
    caption: str = ""

    @property
    def mime(self) -> str:
        return "image/svg+xml" if isinstance(self.content, str) else "image/png"


@dataclass
class Finding:
    """A sentence worth reporting (``info``, ``warning``), with optional structured detail."""

    message: str
    severity: Literal["info", "warning"] = "info"
    detail: dict[str, Any] = field(default_factory=dict)


Result = Table | Figure | Finding


def validate_results(analysis: str, results: Any) -> list[Result]:
    """Return ``results`` as a list, or raise MalformedResult saying what is wrong with it."""
    import pandas as pd

    if results is None:
        return []
    if isinstance(results, (Table, Figure, Finding)):
        results = [results]
    if not isinstance(results, Iterable) or isinstance(results, (str, bytes, dict)):
        raise MalformedResult(
            f"analysis {analysis!r} returned {type(results).__name__}; "
            "return a list of toolkit.plugin.results.Table, Figure or Finding"
        )
    checked: list[Result] = []
    names: set[tuple[str, str]] = set()
    for item in results:
        if not isinstance(item, (Table, Figure, Finding)):
            raise MalformedResult(
                f"analysis {analysis!r} returned a {type(item).__name__} among its results; "
                "only Table, Figure and Finding are allowed"
            )
        if isinstance(item, (Table, Figure)):
            if not NAME_PATTERN.match(item.name):
                raise MalformedResult(
                    f"analysis {analysis!r}: result name {item.name!r} must be lower-case letters, "
                    "digits and underscores, starting with a letter"
                )
            key = (type(item).__name__, item.name)
            if key in names:
                raise MalformedResult(f"analysis {analysis!r} returned two results named {item.name!r}")
            names.add(key)
        if isinstance(item, Table):
            if not isinstance(item.data, pd.DataFrame):
                raise MalformedResult(
                    f"analysis {analysis!r}: table {item.name!r} holds a {type(item.data).__name__}, "
                    "not a pandas DataFrame"
                )
            reserved = {"run_id", "backbone"} & set(map(str, item.data.columns))
            if reserved:
                raise MalformedResult(
                    f"analysis {analysis!r}: table {item.name!r} must not have columns {sorted(reserved)}"
                )
        checked.append(item)
    return checked


#: Core tables inside the ``results_`` namespace of analysis results; no result table may take their names.
#: The registry checks them at load time, before any store is open; a test keeps them equal to those the
#: migrations make (``toolkit.store.migrations.core_tables``).
CORE_RESULT_TABLES = ("results_findings", "results_figures")


def table_name(analysis: str, table: str) -> str:
    """The SQL name a result table takes unless another (analysis, table) pair has it (``toolkit.store.results``)."""
    return f"results_{analysis}" if table == "main" else f"results_{analysis}_{table}"


def core_table_taken_by(analysis: str) -> str | None:
    """The core table one of ``analysis``' result tables would be named like, or None when it is free."""
    main = table_name(analysis, "main")
    return next((core for core in CORE_RESULT_TABLES if core == main or core.startswith(f"{main}_")), None)
