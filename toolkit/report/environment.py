"""The Jinja environment that renders reports: autoescape on, user templates override built-ins.

A ``--template-dir`` folder is searched first; ``{% extends "default:report.html" %}`` reaches the
built-in template from an override of the same name (as in Datasette).
"""

from __future__ import annotations

import base64
import os
import tempfile
from importlib import resources
from pathlib import Path

import jinja2
import pluggy
from markupsafe import Markup

TEMPLATE_PACKAGE = "toolkit.reports"


def builtin_template_dir() -> Path:
    return Path(str(resources.files(TEMPLATE_PACKAGE) / "templates"))


def static_text(name: str) -> str:
    """Text of a file in ``reports/static`` (CSS inlined into reports)."""
    return (resources.files(TEMPLATE_PACKAGE) / "static" / name).read_text(encoding="utf-8")


def figure_markup(mime: str, content: bytes, alt: str) -> Markup:
    """An embedded figure: an ``<img>`` with a data URI, SVG included, so that nothing in a plugin's
    figure can run a script, navigate or load anything (an image's SVG is inert in browsers)."""
    kind = "image/svg+xml" if mime == "image/svg+xml" else "image/png"
    encoded = base64.b64encode(content).decode("ascii")
    return Markup('<img alt="{}" src="data:{};base64,{}">').format(alt, kind, encoded)


def make_environment(template_dir: Path | None, pm: pluggy.PluginManager | None = None) -> jinja2.Environment:
    """The report environment; plugins adjust it through ``prepare_jinja2_environment``."""
    builtin = jinja2.FileSystemLoader(str(builtin_template_dir()))
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(builtin)
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([*loaders, jinja2.PrefixLoader({"default": builtin}, delimiter=":")]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_text"] = static_text
    env.filters["figure"] = lambda fig: figure_markup(fig["mime"], fig["content"], fig["alt"])
    env.filters["num"] = format_number
    if pm is not None:
        pm.hook.prepare_jinja2_environment(env=env)
    if env.autoescape is not True:  # select_autoescape(...) is a function, truthy yet off for most names
        raise ValueError("a plugin turned report autoescaping off; that would let data run as script")
    return env


def format_number(value: object, digits: int = 3) -> str:
    """Numbers for people: integers plainly, floats to ``digits`` significant figures."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "—"
        if 1e3 <= abs(value) < 1e6:  # 1,660 rather than 1.66e+03
            return f"{value:,.0f}"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.{digits - 1}e}"
    return str(value)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
