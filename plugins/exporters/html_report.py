"""The HTML report: one self-contained file per run, rendered from the store (nothing recomputed).

CSS is inlined, figures are data-URI images (SVG or PNG, inert in an ``<img>``), and a
Content-Security-Policy forbids every external load and every script. Patient ids are pseudonymised
in the data before rendering unless ``reveal_ids`` is set, and paths are shown relative to the
dataset root.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from toolkit import __version__, hookimpl
from toolkit.plugin.sections import ReportContext
from toolkit.plugin.types import ExportContext, Exporter
from toolkit.report.data import gather
from toolkit.report.environment import make_environment, write_atomically
from toolkit.report.sections import collect, render

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
       "script-src 'none'; base-uri 'none'; form-action 'none'")


def report_path(out_dir: Path, run_id: str) -> Path:
    """``<out>/tk-report-<run_id>.html``; the run id is reduced to safe characters."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return out_dir / f"tk-report-{safe}.html"


def shareable_command(command: str, data_root: str | None) -> str:
    """The run's command without local absolute paths: the dataset root becomes DATA, any other
    absolute path its file name, in ``--option=PATH`` as well as in ``--option PATH``."""
    parts = []
    for arg in shlex.split(command):
        option, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        parts.append(option + equals + shareable_path(value, data_root))
    return shlex.join(parts)


def shareable_path(arg: str, data_root: str | None) -> str:
    """One argument as the report may show it: under the dataset root relative to ``DATA``, another
    absolute path as its file name, anything else unchanged."""
    if data_root and arg.startswith(data_root):
        return "DATA" + arg[len(data_root):]
    if os.path.isabs(arg):
        return os.path.basename(arg.rstrip("/")) or arg
    return arg


def export_report(context: ExportContext, out_dir: Path) -> list[Path]:
    """Render ``report.html`` for the run into ``out_dir`` (written atomically)."""
    registry = context.registry
    env = make_environment(context.template_dir, registry.pm)
    reveal_ids = bool(context.settings.get("reveal_ids"))
    data = gather(context.store, context.run_id, registry, reveal_ids=reveal_ids)
    report_context = ReportContext(context.run_id, context.store, registry, data["run"], data["backbones"],
                                   pseudonym=data["pseudonyms"])
    data.update(render(collect(report_context), env, data["pseudonyms"]))
    data.update(csp=CSP, tk_version=__version__,
                command=data["pseudonyms"].text(shareable_command(data["run"]["command"], data["run"]["data_root"])),
                data_name=data["pseudonyms"].text(Path(data["run"]["data_root"] or "").name))
    html = env.get_template("report.html").render(**data)
    path = report_path(out_dir, context.run_id)
    write_atomically(path, html)
    return [path]


@hookimpl
def register_exporters(register):
    """Register ``html`` (the run's report; on by default)."""
    register(Exporter(name="html", export=export_report, default=True, rerender=True,
                      description="Self-contained HTML report of the run"))
