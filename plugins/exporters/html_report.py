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

from toolkit import ExportContext, Exporter, __version__, hookimpl, report_page, write_atomically

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
    page = report_page(context)
    run, pseudonyms = page.data["run"], page.data["pseudonyms"]
    html = page.render(csp=CSP, tk_version=__version__,
                       command=pseudonyms.text(shareable_command(run["command"], run["data_root"])),
                       data_name=pseudonyms.text(Path(run["data_root"] or "").name))
    path = report_path(out_dir, context.run_id)
    write_atomically(path, html)
    return [path]


@hookimpl
def register_exporters(register):
    """Register ``html`` (the run's report; on by default)."""
    register(Exporter(name="html", export=export_report, default=True, rerender=True,
                      description="Self-contained HTML report of the run"))
