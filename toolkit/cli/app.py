"""The ``tk`` application: the core commands (``toolkit.cli.run``, ``store``, ``deploy``, ``plugins``)
assembled with those plugins add, and ``main``, the console script's entry point. Heavy libraries are
imported inside commands, so that ``tk --help`` and ``tk plugins`` stay fast and never import TensorFlow."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from toolkit import __version__
from toolkit.cli import deploy, store
from toolkit.cli.plugins import plugins as list_plugins
from toolkit.cli.run import run
from toolkit.errors import TkError

INTERRUPTED = "interrupted; batches already written are kept, run again to resume"


def split_plugin_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--plugin`` values from anywhere on the command line, since plugins must load before
    the commands they add exist; returns (plugin paths, the remaining arguments)."""
    plugins: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--plugin":
            value = next(args, None)
            if value is None:
                raise TkError("--plugin needs a value: the path of a plugin .py file or folder")
            plugins.append(value)
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def root(context: typer.Context,
         debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
         version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    """``tk`` itself: ``--version``, or the help when no command is named (``--debug`` is read by ``main``)."""
    if version:
        print(f"tk {__version__}")
        raise typer.Exit()
    if context.invoked_subcommand is None:
        print(context.get_help())
        raise typer.Exit()


def build_app(plugins: list[str]) -> typer.Typer:
    """The Typer application with the core commands and those the loaded plugins add."""
    from toolkit.plugin.registry import load_registry
    from toolkit.plugin.types import CliContext

    _flags_without_type()
    cli = CliContext(plugins, load_registry(plugins))
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      context_settings={"obj": cli},  # every command's typer.Context.obj
                      help="tk: histopathology image embeddings with pretrained CNN backbones, in DuckDB.")
    app.callback(invoke_without_command=True)(root)
    app.command()(run)
    app.command()(store.ingest)
    app.command(name="plugins")(list_plugins)
    app.command(help=store.SQL_HELP)(store.sql)
    app.command()(store.similar)
    app.command()(store.report)
    app.command()(deploy.export)
    app.command()(deploy.explain)
    app.command()(deploy.predict)
    cli.registry.pm.hook.register_commands(app=app, cli=cli)
    return app


def _flags_without_type() -> None:
    """Typer (0.2x) prints ``<bool>`` beside every flag, though a flag takes no value; show nothing
    there, as click and argparse do. Options that take a value keep their ``<type>``."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "tk_flags_without_type", False):
        return
    typed = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else typed(self, ctx)

    display_type_rich.tk_flags_without_type = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop the way Ctrl-C does (the batch in flight is rolled back, the run marked)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tk`` console script: runs one command and exits (``SystemExit``) with its
    status (README, "Exit codes")."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    debug = "--debug" in argv
    from toolkit import console

    console.route_warnings()
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops a run the way Ctrl-C does

    if argv == ["--version"]:  # no plugin needs loading for this
        print(f"tk {__version__}")
        sys.exit(0)
    try:
        plugins, rest = split_plugin_args(argv)
        app = build_app(plugins)
        code = app(args=rest, prog_name="tk", standalone_mode=False)  # Exit(n) comes back as n here
        if code == 130:  # Typer turns Ctrl-C (and our SIGTERM) into exit code 130 before it reaches us
            console.error(INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)
    except TkError as exc:
        if debug:
            raise
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        console.error(INTERRUPTED)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected: one line, no traceback
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # Click's usage errors, as vendored by Typer
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        console.error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
