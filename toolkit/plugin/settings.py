"""Typed analysis settings, declared once per analysis as a frozen dataclass whose fields come from
:func:`setting`::

    @dataclass(frozen=True)
    class AnovaSettings:
        tukey_top: int = setting(10, "features of largest F per factor that get Tukey HSD")
        factors: tuple[str, ...] = setting(("subtype", "magnification"), "grouping columns")

    Analysis(name="anova", run=anova, settings=AnovaSettings)

``tk run --set anova.factors=subtype,grade`` is parsed against the fields once (types, choices, list
elements); the analysis reads ``context.settings.factors``, already a tuple of text.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable

from toolkit.errors import TkError

if TYPE_CHECKING:
    from toolkit.plugin.types import Analysis

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
SCALARS = (int, float, str, bool)
WORDS = {int: ("a whole number", "whole numbers"), float: ("a number", "numbers"), str: ("text", "texts"),
         bool: ("true or false", "true or false values")}


def setting(default: Any, help: str = "", *, choices: Iterable[Any] | None = None, empty: str = "") -> Any:
    """A field of a settings dataclass.

    :param default: the value when the user sets nothing (a tuple for a ``tuple[X, ...]`` field).
    :param help: one line for ``tk plugins``.
    :param choices: the allowed values (of each element, for a list), if only some are.
    :param empty: for a list, the word that stands for no elements (``auto``, say); without one, an
        empty ``--set`` value is the empty list.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "empty": empty}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NoSettings:
    """The settings of an analysis that declares none."""


@dataclass(frozen=True)
class Setting:
    """One declared setting, as :func:`declared` reads it from a settings dataclass.

    Declaring settings as a tuple of these (``Analysis(settings=(Setting(...), ...))``) still works
    and is deprecated: tk turns the tuple into a settings dataclass, which also answers
    ``context.settings.get(name)`` and ``context.settings[name]`` as the tuple form's dict did.

    :param name: the key, set as ``--set <analysis>.<name>=VALUE``.
    :param type: ``int``, ``float``, ``str``, ``bool``, or ``tuple[X, ...]`` / ``list[X]`` of one of them.
    :param default: the value when the user sets nothing.
    :param help: one line for ``tk plugins``.
    :param choices: the allowed values (of each element, for a list), if only some are.
    :param empty: for a list, the word that stands for no elements.
    """

    name: str
    type: Any
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    empty: str = ""

    @property
    def container(self) -> type | None:
        """``tuple`` or ``list`` for a list setting, None for a single value."""
        return _shape(self.type)[0]

    @property
    def element(self) -> type:
        """The type of the value, or of each element of a list."""
        return _shape(self.type)[1]

    def type_name(self) -> str:
        """``int``, ``list[str]``, ... (``tuple[X, ...]`` reads as ``list[X]``: it is typed as a list)."""
        return f"list[{self.element.__name__}]" if self.container else self.element.__name__

    def expected(self) -> str:
        """What a ``--set`` value must be, in words: ``a whole number (int)``."""
        if not self.container:
            return f"{WORDS[self.element][0]} ({self.type_name()})"
        return (f"{WORDS[self.element][1]} separated by commas ({self.type_name()})"
                + (f", or {self.empty}" if self.empty else ""))

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; ValueError saying what is expected."""
        if not self.container:
            return self._parse_one(text, text)
        if self.empty and text.strip().lower() == self.empty:
            return self.container()
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items and self.empty:
            raise ValueError(f"expected {self.expected()}")
        return self.container(self._parse_one(item, text) for item in items)

    def _parse_one(self, item: str, text: str) -> Any:
        if self.element is bool:
            lowered = item.strip().lower()
            if lowered not in TRUE | FALSE:
                raise ValueError(f"expected {self.expected()}")
            value: Any = lowered in TRUE
        else:
            try:
                value = self.element(item)
            except ValueError:
                raise ValueError(f"expected {self.expected()}" + (f"; {item!r} is not one" if item != text else "")) from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}")
        return value

    def text(self, value: Any) -> str:
        """``value`` as it is written with ``--set`` (a list as ``a,b``, the empty list as its word)."""
        if not self.container:
            return str(value)
        return ",".join(map(str, value)) if value else self.empty

    def describe(self) -> str:
        """``name=default (type): help``, for listings."""
        kind = self.type_name() if self.choices is None else "|".join(map(str, self.choices))
        return f"{self.name}={self.text(self.default)} ({kind}){': ' + self.help if self.help else ''}"

    def check(self) -> None:
        """A TkError when the type is not one tk can parse or the default does not fit it."""
        try:
            container, element = _shape(self.type)
        except TkError as exc:
            raise TkError(f"setting {self.name!r}: {exc}") from None
        values = list(self.default) if container and isinstance(self.default, container) else None
        if container and values is None:
            raise TkError(f"setting {self.name!r}: default {self.default!r} is not a {container.__name__}")
        for value in values if container else [self.default]:
            fits = isinstance(value, element) and (element is bool or not isinstance(value, bool))
            if not (fits or (element is float and isinstance(value, int) and not isinstance(value, bool))):
                raise TkError(f"setting {self.name!r}: default {self.default!r} is not {self.expected()}")
            if self.choices is not None and value not in self.choices:
                raise TkError(f"setting {self.name!r}: default {self.default!r} is not one of "
                              f"{', '.join(map(str, self.choices))}")


def _shape(annotation: Any) -> tuple[type | None, type]:
    """(``tuple``/``list`` or None, the element type) of a supported settings annotation."""
    if annotation in SCALARS:
        return None, annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in SCALARS:
        return tuple, args[0]
    if origin is list and len(args) == 1 and args[0] in SCALARS:
        return list, args[0]
    name = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    raise TkError(f"type {name} is not supported; use int, float, str, bool, or tuple[X, ...] / list[X] of one of them")


@lru_cache(maxsize=None)
def declared(settings: type) -> tuple[Setting, ...]:
    """The settings a settings dataclass declares, in field order; a TkError naming the class and
    the field when one cannot be parsed from ``--set`` (no default, an unsupported type, a default
    that does not fit)."""
    name = getattr(settings, "__qualname__", repr(settings))
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise TkError(f"settings {name} is not a dataclass; declare them as a @dataclass(frozen=True) class "
                      "whose fields come from toolkit.setting(DEFAULT, HELP)")
    if not settings.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TkError(f"settings {name} must be frozen (@dataclass(frozen=True)), so that no analysis changes them")
    try:
        hints = typing.get_type_hints(settings)
    except Exception as exc:
        raise TkError(f"settings {name}: the field types cannot be resolved ({type(exc).__name__}: {exc})") from None
    found = []
    for item in dataclasses.fields(settings):
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise TkError(f"settings {name}: setting {item.name!r} has no default; give it one with setting(DEFAULT, HELP)")
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        spec = Setting(item.name, hints[item.name], default, item.metadata.get("help", ""),
                       item.metadata.get("choices"), item.metadata.get("empty", ""))
        try:
            spec.check()
        except TkError as exc:
            raise TkError(f"settings {name}: {exc}") from None
        found.append(spec)
    return tuple(found)


def _legacy_get(self: Any, name: str, default: Any = None) -> Any:
    return getattr(self, name, default)


def _legacy_item(self: Any, name: str) -> Any:
    try:
        return getattr(self, name)
    except AttributeError:
        raise KeyError(name) from None


def from_legacy(analysis: str, items: tuple[Setting, ...]) -> type:
    """The settings dataclass for a tuple of :class:`Setting`, with a DeprecationWarning; its
    instances also answer ``get(name, default)`` and ``[name]`` as the dict of the tuple form did."""
    if not items:
        return NoSettings
    warnings.warn(f"analysis {analysis!r} declares its settings as a tuple of Setting, which is deprecated; "
                  "declare a @dataclass(frozen=True) class with toolkit.setting() fields and pass the class "
                  "(see docs/writing-an-analysis.md)", DeprecationWarning, stacklevel=4)
    return dataclasses.make_dataclass(
        f"{analysis}_settings", [(s.name, s.type, setting(s.default, s.help, choices=s.choices, empty=s.empty))
                                 for s in items],
        frozen=True, namespace={"get": _legacy_get, "__getitem__": _legacy_item})


def valid_keys(analyses: Iterable[Analysis]) -> list[str]:
    """Every ``<analysis>.<setting>`` key the given analyses accept."""
    return [f"{a.name}.{s.name}" for a in analyses for s in declared(a.settings)]


def parse_assignments(assignments: Iterable[str], analyses: dict[str, Analysis]) -> dict[str, dict[str, Any]]:
    """``["probe.c=0.5", ...]`` as ``{"probe": {"c": 0.5}}``; a TkError listing the valid keys for an
    unknown key, or naming the key and the expected type for a bad value."""
    chosen: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        analysis_name, dot, setting_name = key.strip().partition(".")
        analysis = analyses.get(analysis_name)
        specs = {s.name: s for s in declared(analysis.settings)} if analysis else {}
        if not sep or not dot or setting_name not in specs:
            keys = ", ".join(valid_keys(analyses.values())) or "none"
            raise TkError(f"--set {assignment}: unknown setting {key.strip()!r}; valid keys: {keys}")
        try:
            chosen.setdefault(analysis_name, {})[setting_name] = specs[setting_name].parse(text)
        except ValueError as exc:
            raise TkError(f"--set {assignment}: {exc}") from None
    return chosen


def resolved(analysis: Analysis, chosen: dict[str, dict[str, Any]]) -> Any:
    """The analysis' settings instance: declared defaults, overridden by what the user chose."""
    return analysis.settings(**chosen.get(analysis.name, {}))


def settings_record(settings: Any) -> dict[str, Any]:
    """A settings instance as JSON-ready ``{name: value}`` (lists as lists), for the cache key and
    the run record."""
    return {item.name: list(value) if isinstance(value, (tuple, list)) else value
            for item in dataclasses.fields(settings) for value in [getattr(settings, item.name)]}


def undeclared_read(exc: BaseException, analysis: Analysis, settings: Any) -> str | None:
    """The one line saying that ``analysis`` read a setting it does not declare, when that is what
    ``exc`` is; None otherwise."""
    if not (isinstance(exc, AttributeError) and getattr(exc, "obj", None) is settings):
        return None
    names = ", ".join(s.name for s in declared(analysis.settings)) or "none"
    return (f"analysis {analysis.name!r} reads setting {exc.name!r}, which it does not declare (declared: {names}); "
            f"add it to {type(settings).__name__} with setting(DEFAULT, HELP)")
