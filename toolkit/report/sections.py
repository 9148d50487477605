"""The report's plugin parts: every ``report_sections`` implementation is asked, what it returns is
checked, templated sections are rendered, and the sections are grouped by slot."""

from __future__ import annotations

import re
from typing import Any

import jinja2
from markupsafe import Markup

from toolkit.plugin.results import validate_results
from toolkit.plugin.sections import SLOTS, ComparisonColumn, ReportContext, ReportSection
from toolkit.report.data import Pseudonyms, table_record


class SectionError(TypeError):
    """A plugin returned something that is not a ReportSection, or one that cannot be placed."""


def collect(context: ReportContext) -> list[ReportSection]:
    """Every section the loaded plugins contribute, checked, in slot order then ``order`` then title."""
    found: list[ReportSection] = []
    for returned in context.registry.pm.hook.report_sections(context=context):
        for section in returned or []:
            if not isinstance(section, ReportSection):
                raise SectionError(f"report_sections returned a {type(section).__name__}; return ReportSection objects")
            if section.slot not in SLOTS:
                raise SectionError(f"report section {section.title!r}: slot {section.slot!r} is not one of {', '.join(SLOTS)}")
            validate_results(f"report section {section.title!r}", [*section.tables, *section.figures])
            found.append(section)
    return sorted(found, key=lambda s: (SLOTS.index(s.slot), s.order, s.title))


def anchor(section: ReportSection) -> str:
    """The section's HTML id: its own, or one made from its title."""
    if section.anchor:
        return re.sub(r"[^A-Za-z0-9_-]", "-", section.anchor)
    return "plugin-" + (re.sub(r"[^a-z0-9]+", "-", section.title.lower()).strip("-") or "section")


def render(sections: list[ReportSection], env: jinja2.Environment, pseudonyms: Pseudonyms) -> dict[str, Any]:
    """The template's view: sections by slot (``html`` pre-rendered for templated ones) and the
    comparison table's extra columns. Patient ids in paragraphs, figure texts and tables are
    pseudonymised (a template's ``data`` is the plugin's to pass through ``context.pseudonym``)."""
    by_slot: dict[str, list[dict[str, Any]]] = {slot: [] for slot in SLOTS}
    columns: list[ComparisonColumn] = []
    for section in sections:
        columns += section.columns
        if not (section.title or section.paragraphs or section.tables or section.figures or section.template):
            continue  # a section that only adds columns
        view = {
            "title": section.title, "anchor": anchor(section),
            "paragraphs": [pseudonyms.text(p) for p in section.paragraphs],
            "figures": [{"mime": f.mime, "content": f.content.encode() if isinstance(f.content, str) else f.content,
                         "alt": pseudonyms.text(f.alt), "caption": pseudonyms.text(f.caption)}
                        for f in section.figures],
            "tables": [table_record(t.name, t.description, pseudonyms.frame(t.data), len(t.data))
                       for t in section.tables],
            "html": None,
        }
        if section.template is not None:
            template = env.from_string(section.template.read_text(encoding="utf-8"))
            view["html"] = Markup(template.render(**section.data, section=view))
        by_slot[section.slot].append(view)
    columns.sort(key=lambda c: c.order)
    return {"slots": by_slot, "columns": columns,
            "best_backbones": {c.best for c in columns if c.best}}
