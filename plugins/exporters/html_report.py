"""The HTML report: one self-contained file per run, rendered from the store (nothing recomputed).

CSS is inlined, figures are inline SVG or data-URI PNG, and a Content-Security-Policy forbids every
external load and every script. Patient ids are pseudonymised unless ``reveal_ids`` is set, and
paths are shown relative to the dataset root.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from toolkit import __version__, hookimpl
from toolkit.plugin.types import ExportContext, Exporter, ReportSection
from toolkit.plugins.exporters.report_data import MAX_TABLE_ROWS, gather, redact
from toolkit.plugin.registry import Registry
from toolkit.plugin.results import validate_results
from toolkit.report.environment import make_environment, write_atomically

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
       "script-src 'none'; base-uri 'none'; form-action 'none'")


def report_path(out_dir: Path, run_id: str) -> Path:
    """``<out>/tk-report-<run_id>.html``; the run id is reduced to safe characters."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return out_dir / f"tk-report-{safe}.html"


def shareable_command(command: str, data_root: str | None) -> str:
    """The run's command without local absolute paths: the dataset root becomes DATA, any other
    absolute path its file name."""
    parts = []
    for arg in shlex.split(command):
        if data_root and arg.startswith(data_root):
            arg = "DATA" + arg[len(data_root):]
        elif os.path.isabs(arg):
            arg = os.path.basename(arg.rstrip("/")) or arg
        parts.append(arg)
    return shlex.join(parts)


def plugin_sections(registry: Registry, context: ExportContext) -> list[dict[str, Any]]:
    """Sections from every ``report_sections`` hook, in the shape the template renders."""
    sections = []
    for returned in registry.pm.hook.report_sections(store=context.store, run_id=context.run_id):
        for section in returned or []:
            if not isinstance(section, ReportSection):
                raise TypeError(f"report_sections returned a {type(section).__name__}; return ReportSection objects")
            validate_results(f"report section {section.title!r}", [*section.tables, *section.figures])
            sections.append({
                "title": section.title, "paragraphs": section.paragraphs,
                "figures": [{"mime": f.mime, "content": f.content.encode() if isinstance(f.content, str) else f.content,
                             "alt": f.alt, "caption": f.caption} for f in section.figures],
                "tables": [{"table_name": t.name, "description": t.description, "columns": list(map(str, t.data.columns)),
                            "rows": t.data.head(MAX_TABLE_ROWS).values.tolist(), "n_rows": len(t.data)}
                           for t in section.tables],
            })
    return sections


def export_report(context: ExportContext, out_dir: Path) -> list[Path]:
    """Render ``report.html`` for the run into ``out_dir`` (written atomically)."""
    registry = context.registry
    env = make_environment(context.template_dir, registry.pm)
    titles = {name: a.title or name for name, a in registry.analyses.items()}
    order = {name: a.order for name, a in registry.analyses.items()}
    data = gather(context.store, context.run_id, titles, order, reveal_ids=bool(context.settings.get("reveal_ids")))
    data.update(csp=CSP, tk_version=__version__, plugin_sections=plugin_sections(registry, context),
                command=shareable_command(data["run"]["command"], data["run"]["data_root"]),
                data_name=Path(data["run"]["data_root"] or "").name)
    html = redact(env.get_template("report.html").render(**data), data["redactions"])
    path = report_path(out_dir, context.run_id)
    write_atomically(path, html)
    return [path]


@hookimpl
def register_exporters(register):
    """Register ``html`` (the run's report; on by default)."""
    register(Exporter(name="html", export=export_report, default=True, rerender=True,
                      description="Self-contained HTML report of the run"))
