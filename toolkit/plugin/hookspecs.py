"""Every hook a tk plugin can implement: this module is the plugin API.

A plugin is a module (or package) with functions decorated by ``toolkit.hookimpl`` whose names are
the hook names below. Built-in backbones, analyses and exporters use exactly these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import jinja2
    import typer

    from toolkit.plugin.sections import ReportContext, ReportSection
    from toolkit.plugin.types import CliContext
    from toolkit.plugin.registry import Register

hookspec = pluggy.HookspecMarker("tk")


@hookspec
def register_backbones(register: Register) -> None:
    """Register embedding backbones.

    :param register: call ``register(Backbone(...))`` once per backbone. A name that is already
        taken is refused with an error naming both plugins.

    Example::

        @hookimpl
        def register_backbones(register):
            register(Backbone(name="mobilenetv3", dim=576, input_size=(224, 224),
                              build=build_mobilenet, preprocess=preprocess_mobilenet))
    """


@hookspec
def register_analyses(register: Register) -> None:
    """Register analyses that run on stored embeddings.

    :param register: call ``register(Analysis(...))`` once per analysis.

    Example::

        @hookimpl
        def register_analyses(register):
            register(Analysis(name="feature_means", run=feature_means, needs=Needs(labels=True)))
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters that write files from a finished run (reports, deployable models).

    :param register: call ``register(Exporter(...))`` once per exporter.

    Example::

        @hookimpl
        def register_exporters(register):
            register(Exporter(name="csv", export=write_csv, default=False))
    """


@hookspec
def register_stain_normalisers(register: Register) -> None:
    """Register stain normalisation methods that ``tk run --stain NAME`` applies to every image
    before any backbone (and ``tk similar`` to its query image).

    :param register: call ``register(StainNormaliser(...))`` once per method. A name that is
        already taken (the built-ins are ``macenko`` and ``reinhard``) is refused.

    Example::

        @hookimpl
        def register_stain_normalisers(register):
            register(StainNormaliser(name="vahadane", fit=fit_vahadane, apply=apply_vahadane,
                                     default_state=None))
    """


@hookspec
def register_commands(app: typer.Typer, cli: CliContext) -> None:
    """Add sub-commands to the ``tk`` command line.

    :param app: the root Typer application; decorate functions with ``@app.command()``.
    :param cli: ``cli.plugins``, the ``--plugin`` paths of this invocation, and ``cli.registry``,
        every loaded plugin (take only the arguments you use).

    Example::

        @hookimpl
        def register_commands(app):
            @app.command()
            def hello(name: str):
                print(f"hello {name}")
    """


@hookspec
def prepare_jinja2_environment(env: jinja2.Environment) -> None:
    """Adjust the Jinja environment that renders reports (filters, globals, tests).

    :param env: the report environment (autoescape is on and must stay on).

    Example::

        @hookimpl
        def prepare_jinja2_environment(env):
            env.filters["shout"] = lambda text: str(text).upper()
    """


@hookspec
def report_sections(context: ReportContext) -> list[ReportSection]:
    """Add sections, and columns of the backbone comparison table, to the HTML report of a run.

    :param context: the run (``run_id``, ``run``, ``backbones``), its ``store`` (read; do not
        write), the ``registry`` and ``pseudonym`` for patient ids.
    :returns: a list of ``toolkit.plugin.sections.ReportSection`` (may be empty); ``slot`` says
        where each goes (default: after the per-backbone sections).

    Example::

        @hookimpl
        def report_sections(context):
            n = context.store.images.run_image_count(context.run_id)
            return [ReportSection("Lab notes", paragraphs=[f"{n} images were scanned in our lab."])]
    """
