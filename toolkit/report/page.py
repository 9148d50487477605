"""A run's HTML report in one call, for the exporter that writes it: what the store holds about the
run, the plugins' sections, patient ids pseudonymised, rendered by the report's Jinja templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.plugin.sections import ReportContext
from toolkit.report.data import gather
from toolkit.report.environment import make_environment
from toolkit.report.sections import collect, render

if TYPE_CHECKING:
    import jinja2

    from toolkit.plugin.types import ExportContext


@dataclass
class ReportPage:
    """A run's report, gathered and ready to render.

    :ivar data: the templates' variables: ``run``, ``backbones``, ``images``, the sections and
        comparison columns of every plugin, ..., and ``pseudonyms`` (``pseudonyms.text(s)`` replaces
        every patient id in ``s`` by what the report may show).
    :ivar environment: the Jinja environment (autoescape on; the context's template folder overrides
        the built-in templates).
    """

    data: dict[str, Any]
    environment: jinja2.Environment

    def render(self, template: str = "report.html", **variables: Any) -> str:
        """``template`` rendered with :attr:`data` and ``variables`` (which win over it)."""
        return self.environment.get_template(template).render(**{**self.data, **variables})


def report_page(context: ExportContext) -> ReportPage:
    """Gather the report of ``context.run_id``: ids pseudonymised unless ``context.settings.reveal_ids``,
    every plugin's ``report_sections`` collected and rendered into the page's data."""
    registry = context.registry
    environment = make_environment(context.template_dir, registry.pm)
    data = gather(context.store, context.run_id, registry, reveal_ids=context.settings.reveal_ids)
    sections = collect(ReportContext(context.run_id, context.store, registry, data["run"], data["backbones"],
                                     pseudonym=data["pseudonyms"]))
    data.update(render(sections, environment, data["pseudonyms"]))
    return ReportPage(data, environment)
