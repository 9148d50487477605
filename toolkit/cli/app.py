"""The ``tk`` command line (Typer). Heavy libraries are imported inside commands, so that
``tk --help`` and ``tk plugins`` stay fast and never import TensorFlow."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from toolkit import __version__
from toolkit.errors import TkError

if TYPE_CHECKING:
    from toolkit.models.explain import Prediction

DEFAULT_REPORTS = Path("tk-reports")  # not reports/, which is also a source folder of the package
PLUGIN_HELP = "Load a plugin .py file or a folder of them (repeatable; accepted by every command)."
PluginOption = typer.Option(None, "--plugin", help=PLUGIN_HELP, metavar="FILE")  # read by main() before parsing


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


SQL_HELP = ("Query the store with SQL. Read-only by default: no file is created or changed. --write allows "
            "statements that change the store itself. Other files are never written: ATTACH, COPY, EXPORT DATABASE, "
            "INSTALL and LOAD are refused, and no file outside the store is read unless named with --allow-files "
            "(then only SELECT statements run).")


def _print_table(frame, fmt: str) -> None:
    """Print ``frame`` as csv, json or a table; control characters in names and values are escaped
    (json escapes them itself), so that no query result can drive the terminal."""
    from toolkit.console import printable

    if fmt == "csv":
        text_cell = lambda value: printable(value) if isinstance(value, str) else value  # noqa: E731
        frame.rename(columns=lambda column: printable(str(column))).map(text_cell).to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(frame.to_json(orient="records", default_handler=str))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(show_lines=False)
        for column in frame.columns:
            table.add_column(escape(printable(str(column))), overflow="fold")  # long paths wrap, never cut
        for row in frame.itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        Console().print(table)


def _cell(value: object) -> str:
    """One table cell: a float to 6 significant digits, control characters escaped, cut at 80 characters."""
    from rich.markup import escape

    from toolkit.console import printable

    text = printable(f"{value:.6g}" if isinstance(value, float) else str(value))
    return escape(text if len(text) < 80 else text[:77] + "...")


def _print_fields(*fields: object) -> None:
    """One tab-separated line on stdout, control characters in each field escaped."""
    from toolkit.console import printable

    print("\t".join(printable(str(field)) for field in fields))


def _warn_notes(predictions: list[Prediction]) -> None:
    """Each distinct warning of ``predictions`` (random weights) once, on stderr."""
    from toolkit import console

    for note in dict.fromkeys(p.note for p in predictions if p.note):
        console.warn(note)


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


def build_app(plugins: list[str]) -> typer.Typer:
    """The Typer application with core commands and those plugins add."""
    _flags_without_type()
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="tk: histopathology image embeddings with pretrained CNN backbones, in DuckDB.")

    @app.callback(invoke_without_command=True)
    def root(context: typer.Context, debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
             version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
        if version:
            print(f"tk {__version__}")
            raise typer.Exit()
        if context.invoked_subcommand is None:
            print(context.get_help())
            raise typer.Exit()

    @app.command()
    def run(
        data: Optional[Path] = typer.Argument(None, help="Image folder (BreakHis tree or one folder per class) or CSV manifest. Omit for the bundled demo."),
        backbone: str = typer.Option("all", "--backbone", "-b", help="all (the built-in CNNs and every encoder registered with `tk encoders add`), or a comma list of backbone names."),
        weights: str = typer.Option("auto", "--weights", "-w", help="auto | imagenet | random | PATH to a local weights file."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store", help="DuckDB file that keeps every embedding and result."),
        out: Path = typer.Option(DEFAULT_REPORTS, "--out", help="Folder for the report and other exports."),
        source: str = typer.Option("auto", "--source", help="auto | breakhis | folders | manifest."),
        patient_from: Optional[str] = typer.Option(None, "--patient-from", metavar="REGEX", help="Take each image's patient id from its path (relative to DATA): the regex's first group, or its whole match; an image whose path does not match has no patient id."),
        clinical: Optional[Path] = typer.Option(None, "--clinical", metavar="FILE.csv", help="Patient-level clinical variables: a CSV with a patient_id column, joined to the images by patient id."),
        clinical_type: Optional[List[str]] = typer.Option(None, "--clinical-type", metavar="NAME=KIND", help="Type of a clinical column: categorical, numeric or drop (overrides the inference; repeatable)."),
        analysis: str = typer.Option("all", "--analysis", help="all, none, or a comma list of analyses."),
        export: Optional[str] = typer.Option(None, "--export", help="Comma list of exporters (default: the HTML report); none for no export."),
        seed: int = typer.Option(0, "--seed", help="Seed for random weights and analyses."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 | int8: numeric precision of extraction; bf16, fp16 and int8 embeddings form their own sets, with their parity against fp32 recorded. fp16 is for GPUs."),
        reveal_ids: bool = typer.Option(False, "--reveal-ids", help="Show real patient ids in the report."),
        template_dir: Optional[Path] = typer.Option(None, "--template-dir", help="Folder of report templates overriding the built-ins."),
        stain: str = typer.Option("none", "--stain", help="none | macenko | reinhard | a plugin's normaliser: stain normalisation of every image before embedding; normalised embeddings form their own sets."),
        stain_reference: Optional[Path] = typer.Option(None, "--stain-reference", metavar="IMAGE", help="Image whose stains --stain normalises to (default: the method's built-in reference)."),
        analysis_timeout: Optional[float] = typer.Option(None, "--analysis-timeout", min=0.01, help="Give up on an analysis after this many seconds (recorded as failed)."),
        set_values: Optional[List[str]] = typer.Option(None, "--set", metavar="NAME.KEY=VALUE", help="An analysis setting, e.g. --set probe.c=0.5 (repeatable; `tk plugins` lists them)."),
        engine: str = typer.Option("local", "--engine", help="local | ray: embed in this process, or on a Ray cluster that writes Parquet shards the run ingests (pip install 'tk-embeddings[ray]')."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="auto|ray://HOST:PORT", help="Ray cluster for --engine ray (default: start a local Ray with this machine's cores)."),
        shards: Optional[Path] = typer.Option(None, "--shards", metavar="DIR", help="Shard folder of --engine ray, readable by every worker (default: beside the store, tk.shards/)."),
        ray_cpus_per_actor: float = typer.Option(1.0, "--ray-cpus-per-actor", min=0, help="CPUs per embedding actor of --engine ray."),
        ray_gpus_per_actor: float = typer.Option(0.0, "--ray-gpus-per-actor", min=0, help="GPUs per embedding actor of --engine ray."),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Embed images with the selected backbones, store, analyse and report."""
        from toolkit import console
        from toolkit.run.job import execute_run
        from toolkit.run.settings import RunSettings

        if weights not in ("auto", "imagenet", "random") and not Path(weights).expanduser().exists():
            raise TkError(f"--weights {weights}: no such file; use auto, imagenet, random or the path of a weights file")
        settings = RunSettings(data=data, backbones=backbone, weights=weights, store=store, out=out,
                               plugins=plugins, source=source, patient_from=patient_from, analyses=analysis,
                               clinical=clinical, clinical_types=list(clinical_type or []),
                               exports=export, seed=seed, batch_size=batch_size, precision=precision, stain=stain, stain_reference=stain_reference, reveal_ids=reveal_ids, template_dir=template_dir,
                               analysis_timeout=analysis_timeout, analysis_settings=list(set_values or []),
                               engine=engine, ray_address=ray_address, shards=shards,
                               ray_cpus_per_actor=ray_cpus_per_actor, ray_gpus_per_actor=ray_gpus_per_actor)
        summary = execute_run(settings)
        for path in summary.outputs:
            print(path)
        state = "finished" if not summary.failures else f"finished with {len(summary.failures)} failure(s)"
        console.info(f"run {summary.run_id} {state}: {summary.n_images} images, {summary.n_skipped} skipped; store {store}")
        raise typer.Exit(summary.exit_code)

    @app.command()
    def ingest(
        shards_dir: Path = typer.Argument(..., metavar="SHARDS_DIR", help="Folder of Parquet shards, one subfolder per embedding set (docs/store.md)."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
    ) -> None:
        """Ingest Parquet shards written by a cluster job into the store (idempotent)."""
        from toolkit import console
        from toolkit.run.engine import ingest_finished
        from toolkit.store import Store

        if not shards_dir.is_dir():
            raise TkError(f"{shards_dir} is not a folder; give the shard folder of a cluster job")
        with Store.open(store) as opened:
            added = ingest_finished(opened, shards_dir, None)
        console.info(f"{added} new embeddings in {store}")

    @app.command(name="plugins")
    def plugins_command(
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """List every backbone, analysis and exporter with the plugin it came from."""
        from toolkit.plugin.registry import load_registry

        rows = load_registry(plugins).listing()
        if as_json:
            print(json.dumps(rows, indent=2, default=str))
            return
        import pandas as pd

        columns = ["name", "kind", "plugin", "source", "version"]
        _print_table(pd.DataFrame(rows, columns=columns), "table")
        settings = [{"setting (tk run --set KEY=VALUE)": s["key"], "type": s["type"], "default": s["default"],
                     "help": s["help"]} for row in rows for s in row.get("settings", [])]
        if settings:
            _print_table(pd.DataFrame(settings), "table")

    @app.command(help=SQL_HELP)
    def sql(
        query: str = typer.Argument(..., help="SQL to run against the store."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        fmt: str = typer.Option("table", "--format", help="table | csv | json"),
        write: bool = typer.Option(False, "--write", help="Allow statements that change the store (no other file)."),
        allow_files: Optional[List[Path]] = typer.Option(
            None, "--allow-files", help="A file or folder SELECT may also read (repeatable); never written."),
    ) -> None:
        """Query the store with SQL (see SQL_HELP)."""
        from toolkit.store import Store

        with Store.open_for_sql(store, write=write, readable=allow_files or ()) as opened:
            frame = opened.run_user_sql(query, select_only=bool(allow_files))
        _print_table(frame, fmt)

    @app.command()
    def similar(
        image: Path = typer.Argument(..., help="Query image."),
        backbone: str = typer.Option(..., "--backbone", "-b", help="Backbone whose embeddings to compare."),
        k: int = typer.Option(10, "-k", min=1, help="How many neighbours."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        fmt: str = typer.Option("table", "--format", help="table | csv | json"),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Nearest stored images by cosine similarity (the query is embedded if it is new)."""
        from toolkit.plugin.registry import load_registry
        from toolkit.models.similar import find_similar
        from toolkit.models.variants import find_backbone
        from toolkit.store import Store

        registry = load_registry(plugins)
        with Store.open(store, must_exist=True) as opened:  # writes a new query image's embedding
            frame = find_similar(opened, find_backbone(registry.backbones, backbone), image, k, registry)
        _print_table(frame, fmt)

    @app.command()
    def report(
        run_id: Optional[str] = typer.Argument(None, help="Run to render (default: the latest finished run; a failed run is rendered only when named, with why it failed)."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        out: Path = typer.Option(DEFAULT_REPORTS, "--out"),
        reveal_ids: bool = typer.Option(False, "--reveal-ids", help="Show real patient ids."),
        template_dir: Optional[Path] = typer.Option(None, "--template-dir"),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Render a stored run's report again, without recomputing."""
        from toolkit.run.job import rerender

        for path in rerender(store, run_id, out, plugins, template_dir, reveal_ids):
            print(path)

    @app.command(name="export")
    def export_command(
        backbone: str = typer.Option(..., "--backbone", "-b", help="Backbone whose classifier to export."),
        fmt: str = typer.Option("tflite", "--format", "-f", help="tflite | tflite-fp16 | tflite-dynamic | tflite-int8 | savedmodel (comma list allowed)."),
        run_id: Optional[str] = typer.Option(None, "--run", help="Run whose embeddings train the head (default: the latest finished run)."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        out: Path = typer.Option(Path("exports"), "--out", help="Folder for the exported models."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document: the files and every table row."),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Export a backbone + probe-head classifier, with size, latency and parity numbers."""
        from toolkit import console
        from toolkit.plugin.types import ExportContext
        from toolkit.plugin.registry import load_registry
        from toolkit.run.exports import ExportEscape, export_into
        from toolkit.run.settings import EXIT_PARTIAL, check_out_folder, select
        from toolkit.store import Store

        registry = load_registry(plugins)
        exporters = select(registry.exporters, fmt, "exporter")
        check_out_folder(out)
        escaped, files = False, []
        with Store.open(store, must_exist=True) as opened:  # records the exports' parity
            context = ExportContext(opened.run(run_id)["run_id"], opened, {"backbones": [backbone], "seed": seed},
                                    registry=registry)
            for exporter in exporters:
                try:
                    files += [str(path) for path in export_into(exporter, context, out)]
                except ExportEscape as exc:
                    console.error(f"exporter {exporter.name}: {exc}")
                    escaped = True
            tables = {spec.name: spec for exporter in exporters for spec in exporter.tables}
            rows = {name: opened.rows(spec, where={"run_id": context.run_id, "backbone": backbone})
                    for name, spec in tables.items()}
        if as_json:
            print(json.dumps({"files": files, **{name: frame.to_dict("records") for name, frame in rows.items()}},
                             default=str))
        else:
            print("\n".join(files))
            for name, frame in rows.items():
                if not frame.empty:
                    _print_table(frame[list(tables[name].summary or tables[name].columns)], "table")
        if escaped:
            raise typer.Exit(EXIT_PARTIAL)

    @app.command()
    def explain(
        image: Path = typer.Argument(..., help="Image to explain."),
        backbone: str = typer.Option(..., "--backbone", "-b"),
        run_id: Optional[str] = typer.Option(None, "--run", help="Run whose embeddings train the head (default: the latest finished run)."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the overlay PNG."),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Grad-CAM overlay of the backbone + probe-head classifier for one image."""
        from toolkit.models.classifier import load_classifier
        from toolkit.models.explain import explain as explain_image
        from toolkit.plugin.registry import load_registry
        from toolkit.store import Store

        with Store.open(store, read_only=True) as opened:
            classifier = load_classifier(opened, load_registry(plugins), backbone, run_id)
        prediction = explain_image(classifier, image, out)
        _print_fields(prediction.overlay, prediction.label, f"{prediction.probability:.3f}",
                      f"{prediction.weights_kind} weights")
        _warn_notes([prediction])

    @app.command()
    def predict(
        images: List[Path] = typer.Argument(..., help="Images to classify."),
        model: Path = typer.Option(..., "--model", help="An exported .tflite file or SavedModel version folder."),
        explain_with: bool = typer.Option(False, "--explain", help="Also write Grad-CAM overlays from the Keras model (needs the store)."),
        store: Path = typer.Option(Path("tk.duckdb"), "--store"),
        out: Path = typer.Option(Path("explanations"), "--out"),
        plugin: Optional[List[str]] = PluginOption,
    ) -> None:
        """Classify images with an exported model: class, probability and latency."""
        from toolkit.models.explain import predict as predict_images
        from toolkit.plugin.registry import load_registry

        print("image\tclass\tprobability\tlatency_ms\tweights")
        predictions = predict_images(model, images, load_registry(plugins))
        for p in predictions:
            _print_fields(p.image, p.label, f"{p.probability:.4f}", f"{p.latency_ms:.1f}", p.weights_kind)
        _warn_notes(predictions)
        if explain_with:
            from toolkit.models.classifier import load_classifier
            from toolkit.models.explain import explain as explain_image, load_exported
            from toolkit.plugin.registry import load_registry
            from toolkit.store import Store

            meta = load_exported(model)[1]
            with Store.open(store, read_only=True) as opened:
                classifier = load_classifier(opened, load_registry(plugins), meta["backbone"], meta["run_id"])
            for image in images:
                _print_fields(explain_image(classifier, image, out).overlay)

    from toolkit.plugin.registry import load_registry
    from toolkit.plugin.types import CliContext

    registry = load_registry(plugins)
    registry.pm.hook.register_commands(app=app, cli=CliContext(plugins, registry))
    return app


INTERRUPTED = "interrupted; batches already written are kept, run again to resume"


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop the way Ctrl-C does (the batch in flight is rolled back, the run marked)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tk`` console script."""
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
