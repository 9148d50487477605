"""Extraction engines of ``tk run``: ``local`` (this process, ``toolkit.extract.pipeline``) and ``ray``.

With ``--engine ray`` the driver (this process) scans, hashes and plans exactly as the local engine
does; only the contents some embedding set lacks go to the cluster. Ray Data runs an actor pool of
``toolkit.extract.distributed.EmbedActor`` over them; each finished task writes Parquet shards, and
the driver ingests them into DuckDB (``toolkit.store.shards``). The store has one writer: this
process. A run that was killed leaves finished shards behind; the next run ingests them before it
plans, so it embeds only what is still missing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from toolkit import console
from toolkit.errors import TkError
from toolkit.extract.stain import StainStep
from toolkit.extract.pipeline import BackboneJob, extract
from toolkit.ingest.scan import ScannedImage
from toolkit.store import Store

INGEST_EVERY_S = 10.0  # the driver ingests finished shards while the cluster embeds, so ingest overlaps compute

Extract = Callable[..., list[ScannedImage]]  # the signature of toolkit.extract.pipeline.extract


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray engine runs."""

    shards: Path
    address: str | None = None  # None: start a local Ray with this machine's cores; "auto" or ray://HOST:PORT
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    plugins: tuple[str, ...] = ()


def default_shards(store: Path) -> Path:
    """The shard folder beside a store: ``tk.duckdb`` -> ``tk.shards``."""
    return store.with_name(store.stem + ".shards")


def ingest_finished(store: Store, folder: Path, run_id: str | None, quiet: bool = False) -> int:
    """Ingest the shards under ``folder`` not ingested before (left by a killed run, or by a cluster
    job); says what each set got (unless ``quiet``) and returns the rows added."""
    added = 0
    for done in store.shards.ingest_shards(folder, run_id):
        if not quiet:
            console.info(f"ingested {done.shards} shard(s) of {done.table} from {folder}: {done.rows} rows, "
                         f"{done.new_rows} new" + (f", {done.rejected} rejected (NaN/infinite, bad sha256 or "
                                                   "another set's name)" if done.rejected else ""))
        added += done.new_rows
    return added


def engine_extract(engine: str, store: Store, run_id: str, options: RayOptions | None) -> Extract:
    """The extraction function of ``engine``; for ``ray`` the finished shards of earlier runs are
    ingested first, so that planning sees them as stored."""
    if engine == "local":
        return extract_locally
    assert options is not None
    ingest_finished(store, options.shards, run_id)
    return functools.partial(extract_on_ray, options)


def extract_locally(images: list[ScannedImage], jobs: list[BackboneJob], store: Store, *args: Any,
                    **kwargs: Any) -> list[ScannedImage]:
    """``toolkit.extract.pipeline.extract`` in this process, writing through the store's embeddings."""
    return extract(images, jobs, store.embeddings, *args, **kwargs)


def extract_on_ray(options: RayOptions, images: list[ScannedImage], jobs: list[BackboneJob], store: Store,
                   run_id: str, on_progress: Callable[[int], None],
                   on_unreadable: Callable[[ScannedImage, str], None], batch_size: int,
                   stain: StainStep | None = None) -> list[ScannedImage]:
    """``toolkit.extract.pipeline.extract`` on a Ray cluster: embed every image some job needs, write
    the shards, ingest them and record the images; returns the images that decoded. ``stain`` must be
    None: :class:`toolkit.run.settings.RunSettings` refuses stain normalisation on Ray."""
    if stain is not None:
        raise TkError("stain normalisation is not supported on Ray yet; use --engine local")
    import ray

    from toolkit.extract.distributed import SETS_SEPARATOR, EmbedActor

    worker_jobs = [_worker_job(store, job) for job in jobs]
    by_table = {w.table: job for w, job in zip(worker_jobs, jobs)}
    by_sha = {image.sha256: image for image in images}
    rows = [{"sha256": image.sha256, "path": str(Path(image.record.path).resolve()),
             "sets": SETS_SEPARATOR.join(w.table for w, job in zip(worker_jobs, jobs) if image.sha256 in job.needed)}
            for image in images]
    shards = options.shards.resolve()
    bad: set[str] = set()
    n_tasks = max(1, math.ceil(len(rows) / batch_size))
    with ray_session(options.address) as cluster:
        n_actors = min(_pool_size(cluster, options), n_tasks)  # an actor without a task would only build models
        console.info(f"Ray: {n_actors} actor(s) of {options.cpus_per_actor:g} CPU"
                     + (f" and {options.gpus_per_actor:g} GPU" if options.gpus_per_actor else "")
                     + f"; shards in {shards}")
        dataset = ray.data.from_items(rows, override_num_blocks=n_tasks)
        embedded = dataset.map_batches(
            EmbedActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None,
            fn_constructor_kwargs={"jobs": worker_jobs, "plugins": list(options.plugins), "shard_dir": str(shards),
                                   "batch_size": batch_size, "threads": max(1, int(options.cpus_per_actor))})
        try:
            _follow(embedded, by_sha, by_table, bad, on_progress, on_unreadable,
                    lambda: ingest_finished(store, shards, run_id, quiet=True))
        finally:  # what finished is kept, even when the run stops here
            ingest_finished(store, shards, run_id, quiet=True)
    done = [image for image in images if image.sha256 not in bad]
    store.images.add_images(run_id, done)
    return done


def _follow(embedded: Any, by_sha: dict[str, ScannedImage], by_table: dict[str, BackboneJob], bad: set[str],
            on_progress: Callable[[int], None], on_unreadable: Callable[[ScannedImage, str], None],
            ingest: Callable[[], object]) -> None:
    """Read the workers' reports as their tasks finish (progress, unreadable files, counts, errors),
    ingesting the finished shards every ``INGEST_EVERY_S`` seconds."""
    last_ingest = time.monotonic()
    for report in embedded.iter_rows():
        if time.monotonic() - last_ingest >= INGEST_EVERY_S:
            ingest()
            last_ingest = time.monotonic()
        for sha, reason in json.loads(report["unreadable"]).items():
            bad.add(sha)
            on_unreadable(by_sha[sha], reason)
        for table, count in json.loads(report["embedded"]).items():
            by_table[table].embedded += count
        for table, seconds in json.loads(report["seconds"]).items():
            by_table[table].seconds += seconds
        for table, error in json.loads(report["errors"]).items():
            by_table[table].error = by_table[table].error or error
        on_progress(int(report["n_images"]))


def _worker_job(store: Store, job: BackboneJob) -> Any:
    """The job as a worker rebuilds it: the weights request that gives the set's recorded weights."""
    from toolkit.extract.distributed import WorkerJob
    from toolkit.extract.weights import request_for

    if job.backbone.fixed_weights:  # fine-tuned variants (<base>@<train_id>) exist only in the driver's registry
        raise TkError(f"--engine ray embeds registered backbones only; run {job.backbone.name} with --engine local")
    shard_set = store.shards.shard_set(job.embedding_set)
    request, seed = request_for(shard_set.weights_kind, shard_set.weights_id, shard_set.weights_path)
    return WorkerJob(job.backbone.name, request, seed, shard_set)


def _pool_size(cluster: dict[str, float], options: RayOptions) -> int:
    """How many actors the cluster's CPUs (and GPUs, when asked for) hold."""
    sizes = [cluster.get("CPU", 0) / options.cpus_per_actor] if options.cpus_per_actor else []
    if options.gpus_per_actor:
        sizes.append(cluster.get("GPU", 0) / options.gpus_per_actor)
    size = int(min(sizes)) if sizes else 1
    if size < 1:
        raise TkError(f"the Ray cluster has {cluster.get('CPU', 0):g} CPU(s) and {cluster.get('GPU', 0):g} GPU(s): "
                      f"too few for one actor of {options.cpus_per_actor:g} CPU and {options.gpus_per_actor:g} GPU; "
                      "lower --ray-cpus-per-actor / --ray-gpus-per-actor")
    return size


@contextmanager
def ray_session(address: str | None) -> Iterator[dict[str, float]]:
    """Ray connected (to ``address``, or a new local Ray with this machine's cores); yields the
    cluster's resources. A Ray this function started is shut down at the end; one already running
    in the process (a caller's) is left as it was."""
    import ray

    started = not ray.is_initialized()
    if started:
        quiet = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
        try:
            if address is None:
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR, runtime_env=quiet)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, runtime_env=quiet)
        except ConnectionError as exc:
            raise TkError(f"--ray-address {address}: cannot connect ({str(exc).splitlines()[0]}); start the cluster "
                          "(ray start --head, or KubeRay) or omit the option for a local Ray") from exc
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False  # tk's own bar, fed by the tasks' reports
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
