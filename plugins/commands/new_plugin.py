"""``tk new-plugin NAME --kind analysis|backbone|exporter``: a pip-installable plugin package.

The package has a ``pyproject.toml`` declaring the ``tk`` entry point, one example hook
implementation and a test that runs the conformance kit (``toolkit.testing``) on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toolkit import PLUGIN_NAME, TkError, core_table_taken_by, hookimpl

KINDS = ("analysis", "backbone", "exporter")
if TYPE_CHECKING:
    import typer

    from toolkit import CliContext, Registry

SCAFFOLD = Path(__file__).parent / "scaffold"


def _files(name: str, kind: str) -> dict[str, str]:
    """Generated path -> template name."""
    return {
        "pyproject.toml": "pyproject.toml.jinja",
        "README.md": "README.md.jinja",
        f"tk_{name}/__init__.py": f"{kind}.py.jinja",
        f"tests/test_{name}.py": "test_plugin.py.jinja",
    }


def render_plugin(name: str, kind: str, parent: Path) -> Path:
    """Write the package ``tk-<name>`` into ``parent`` and return its folder.

    ``name`` must be a lower-case identifier (it becomes the entry point, the module ``tk_<name>``
    and the registered name), so it cannot inject anything into the generated code.
    """
    import jinja2

    if not PLUGIN_NAME.match(name):
        raise TkError(f"plugin name {name!r} must be lower-case letters, digits and single underscores, "
                      "starting with a letter and not ending with _ (at most 41 characters)")
    if kind not in KINDS:
        raise TkError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    core = core_table_taken_by(name) if kind == "analysis" else None
    if core:
        raise TkError(f"analysis name {name!r} would store its results in tk's core table {core}; choose another name")
    target = parent / f"tk-{name.replace('_', '-')}"
    if target.exists():
        raise TkError(f"{target} already exists; choose another NAME or --dir, or remove it")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(SCAFFOLD)), autoescape=False,  # code, not HTML
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    values = {"name": name, "kind": kind, "module": f"tk_{name}", "dist": target.name,
              "title": name.replace("_", " ").capitalize()}
    for relative, template in _files(name, kind).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(**values), encoding="utf-8")
    return target


def _refuse_taken(name: str, registry: Registry) -> None:
    """Refuse a name that a loaded plugin already registered: both could not load together."""
    for row in registry.listing():
        if row["name"] == name:
            raise TkError(f"{name!r} is already taken by the {row['kind']} of plugin {row['plugin']}; choose another name")


@hookimpl
def register_commands(app: typer.Typer, cli: CliContext) -> None:
    """Add ``tk new-plugin``."""
    import typer

    @app.command(name="new-plugin")
    def new_plugin(
        name: str = typer.Argument(..., help="Plugin name: lower-case letters, digits and single underscores."),
        kind: str = typer.Option("analysis", "--kind", help="analysis | backbone | exporter"),
        directory: Path = typer.Option(Path("."), "--dir", help="Folder to create the package in."),
    ) -> None:
        """Create a pip-installable plugin package with an example and a conformance test."""
        from toolkit import console

        _refuse_taken(name, cli.registry)
        target = render_plugin(name, kind, directory)
        print(target)
        console.info(f"next: pip install -e {target} && tk plugins && python -m pytest {target / 'tests'}")
