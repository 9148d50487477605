"""Typed analysis settings: what an analysis declares, and ``tk run --set NAME.KEY=VALUE`` parsed
against those declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from toolkit.errors import TkError

if TYPE_CHECKING:
    from toolkit.plugin.types import Analysis

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One setting of an analysis.

    :param name: lower-case key, set as ``--set <analysis>.<name>=VALUE``.
    :param type: ``int``, ``float``, ``str`` or ``bool``.
    :param default: the value when the user sets nothing.
    :param help: one line for ``tk plugins``.
    :param choices: the allowed values, if only some are.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; ValueError saying what is expected."""
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered not in TRUE | FALSE:
                raise ValueError("expected true or false")
            value: Any = lowered in TRUE
        else:
            try:
                value = self.type(text)
            except ValueError:
                raise ValueError(f"expected {'a whole number' if self.type is int else 'a number' if self.type is float else 'text'}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}")
        return value

    def describe(self) -> str:
        """``name=default (type): help``, for listings."""
        kind = self.type.__name__ if self.choices is None else "|".join(map(str, self.choices))
        return f"{self.name}={self.default} ({kind}){': ' + self.help if self.help else ''}"


def valid_keys(analyses: Iterable[Analysis]) -> list[str]:
    """Every ``<analysis>.<setting>`` key the given analyses accept."""
    return [f"{a.name}.{s.name}" for a in analyses for s in a.settings]


def parse_assignments(assignments: Iterable[str], analyses: dict[str, Analysis]) -> dict[str, dict[str, Any]]:
    """``["probe.c=0.5", ...]`` as ``{"probe": {"c": 0.5}}``; a TkError listing the valid keys for an
    unknown key or naming the expected type for a bad value."""
    chosen: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        analysis_name, dot, setting_name = key.strip().partition(".")
        analysis = analyses.get(analysis_name)
        declared = {s.name: s for s in analysis.settings} if analysis else {}
        if not sep or not dot or setting_name not in declared:
            keys = ", ".join(valid_keys(analyses.values())) or "none"
            raise TkError(f"--set {assignment}: unknown setting {key.strip()!r}; valid keys: {keys}")
        try:
            chosen.setdefault(analysis_name, {})[setting_name] = declared[setting_name].parse(text)
        except ValueError as exc:
            raise TkError(f"--set {assignment}: {exc}") from None
    return chosen


def resolved(analysis: Analysis, chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The analysis' settings: declared defaults, overridden by what the user chose."""
    return {s.name: s.default for s in analysis.settings} | chosen.get(analysis.name, {})
