"""Commands that read or fill the store: ``tk sql``, ``tk similar``, ``tk report`` and ``tk ingest``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from toolkit.cli.options import (DEFAULT_REPORTS, DEFAULT_STORE, FormatOption, PluginOption, ReportsOption,
                                 RevealIdsOption, StoreOption, TemplateDirOption)
from toolkit.cli.output import print_table
from toolkit.errors import TkError

SQL_HELP = ("Query the store with SQL. Read-only by default: no file is created or changed. --write allows "
            "statements that change the store itself. Other files are never written: ATTACH, COPY, EXPORT DATABASE, "
            "INSTALL and LOAD are refused, and no file outside the store is read unless named with --allow-files "
            "(then only SELECT statements run).")


def sql(
    query: Annotated[str, typer.Argument(help="SQL to run against the store.")],
    store: StoreOption = DEFAULT_STORE,
    fmt: FormatOption = "table",
    write: Annotated[bool, typer.Option(
        "--write", help="Allow statements that change the store (no other file).")] = False,
    allow_files: Annotated[Optional[List[Path]], typer.Option(
        "--allow-files", help="A file or folder SELECT may also read (repeatable); never written.")] = None,
) -> None:
    """Query the store with SQL (see SQL_HELP)."""
    from toolkit.store import Store

    with Store.open_for_sql(store, write=write, readable=allow_files or ()) as opened:
        frame = opened.run_user_sql(query, select_only=bool(allow_files))
    print_table(frame, fmt)


def similar(
    context: typer.Context,
    image: Annotated[Path, typer.Argument(help="Query image.")],
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose embeddings to compare.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many neighbours.")] = 10,
    store: StoreOption = DEFAULT_STORE,
    fmt: FormatOption = "table",
    plugin: PluginOption = None,
) -> None:
    """Nearest stored images by cosine similarity (the query is embedded if it is new)."""
    from toolkit.models.similar import find_similar
    from toolkit.models.variants import find_backbone
    from toolkit.store import Store

    registry = context.obj.registry
    with Store.open(store, must_exist=True) as opened:  # writes a new query image's embedding
        frame = find_similar(opened, find_backbone(registry.backbones, backbone), image, k, registry)
    print_table(frame, fmt)


def report(
    context: typer.Context,
    run_id: Annotated[Optional[str], typer.Argument(
        help="Run to render (default: the latest finished run; a failed run is rendered only when named, with why "
             "it failed).")] = None,
    store: StoreOption = DEFAULT_STORE,
    out: ReportsOption = DEFAULT_REPORTS,
    reveal_ids: RevealIdsOption = False,
    template_dir: TemplateDirOption = None,
    plugin: PluginOption = None,
) -> None:
    """Render a stored run's report again, without recomputing."""
    from toolkit.run.job import rerender

    for path in rerender(store, run_id, out, context.obj.plugins, template_dir, reveal_ids):
        print(path)


def ingest(
    shards_dir: Annotated[Path, typer.Argument(
        metavar="SHARDS_DIR", help="Folder of Parquet shards, one subfolder per embedding set (docs/store.md).")],
    store: StoreOption = DEFAULT_STORE,
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
