"""The worker side of ``tk run --engine ray``: an actor that embeds a batch of images with every
backbone that needs them and writes one Parquet shard per embedding set.

Workers never open the store. They load the same plugins as the driver (built-ins and ``--plugin``
files, rebuilt in each actor), build each backbone with the weights the driver resolved, and embed
through the code path the local engine uses: each image's pixels read through its ``PixelSource``
(bytes read once and checked against the planned sha256) and decoded in the bounded pool of
``toolkit.extract.batches``, batch norms folded, the fixed-batch graph of ``extractor_at`` (or the
recorded int8 model). TensorFlow is imported only where a backbone is a Keras model. A file changed
since the driver scanned it is reported and skipped; a batch with a NaN or infinite vector is
reported and not written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.store.shards import ShardSet

SETS_SEPARATOR = ","


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to rebuild one backbone exactly as the driver planned it."""

    backbone: str
    request: str  # the --weights request that rebuilds the resolved weights: random, imagenet or a file path
    seed: int
    shard_set: ShardSet

    @property
    def table(self) -> str:
        return self.shard_set.embedding_set.table


class EmbedActor:
    """A Ray Data callable class: ``__init__`` builds the backbones once per actor, ``__call__``
    embeds one batch and returns one report row (shards written, images done, problems)."""

    def __init__(self, jobs: list[WorkerJob], plugins: list[str], shard_dir: str, batch_size: int,
                 threads: int) -> None:
        from toolkit.extract.pipeline import BackboneJob
        from toolkit.plugin.registry import load_registry
        from toolkit.store import EmbeddingSet

        registry = load_registry(plugins)
        backbones = [registry.backbone(job.backbone) for job in jobs]
        if any(backbone.extractor is None for backbone in backbones):  # a Keras model: TensorFlow computes
            _limit_tensorflow_threads(threads)
        self.shard_dir, self.batch_size, self.threads = shard_dir, batch_size, threads
        self.jobs: list[tuple[WorkerJob, BackboneJob]] = []
        for job, backbone in zip(jobs, backbones):
            embedding_set = EmbeddingSet(backbone.name, job.shard_set.weights_id, backbone.dim, job.shard_set.precision)
            self.jobs.append((job, BackboneJob(backbone, embedding_set, None, set(),
                                               extract=_extractor(backbone, job, batch_size))))
        self.sizes = sorted({(b.backbone.input_size, b.backbone.resize) for _, b in self.jobs})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from toolkit.extract.batches import decoded_batches
        from toolkit.extract.memory import release_free_memory
        from toolkit.extract.pipeline import embed_padded, non_finite_error
        from toolkit.extract.pixels import ImageFile
        from toolkit.store.shards import write_shard

        shas = [str(s) for s in batch["sha256"]]
        wanted = [set(str(s).split(SETS_SEPARATOR)) for s in batch["sets"]]
        sources = [ImageFile(str(path), sha) for path, sha in zip(batch["path"], shas)]
        [decoded] = decoded_batches(sources, self.sizes, max(1, len(sources)), self.threads)
        unreadable = {shas[k]: reason for k, reason in decoded.unreadable.items()}
        shards, embedded, seconds, errors = [], {}, {}, {}
        for job, backbone_job in self.jobs:
            rows = [k for k, index in enumerate(decoded.readable) if job.table in wanted[index]]
            if not rows:
                continue
            size = self.sizes.index((backbone_job.backbone.input_size, backbone_job.backbone.resize))
            pixels = decoded.pixels[size][rows]
            started = time.perf_counter()
            out = embed_padded(backbone_job.extract, pixels, self.batch_size)
            seconds[job.table] = time.perf_counter() - started
            error = non_finite_error(backbone_job, out)
            if error:
                errors[job.table] = error
                continue
            embedded_shas = [shas[decoded.readable[k]] for k in rows]
            shards.append(str(write_shard(self.shard_dir, job.shard_set, embedded_shas, out)))
            embedded[job.table] = len(rows)
        release_free_memory()
        return {"n_images": [len(shas)], "shards": [json.dumps(shards)], "embedded": [json.dumps(embedded)],
                "seconds": [json.dumps(seconds)], "unreadable": [json.dumps(unreadable)], "errors": [json.dumps(errors)]}


def _limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow's thread pools sized to the CPUs Ray gave this actor, no more."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from toolkit.extract.tfimport import tensorflow

    tf = tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process (not a fresh worker): keep its pools
        pass


def _extractor(backbone: Any, job: WorkerJob, batch_size: int) -> Any:
    """The extractor the local engine would use for this backbone, weights and precision."""
    from toolkit.extract.precision import extractor_at, lite_extractor

    if job.shard_set.precision == "int8":
        if not job.shard_set.model_path or not os.path.isfile(job.shard_set.model_path):
            raise FileNotFoundError(f"the int8 model {job.shard_set.model_path} of {backbone.name} is not readable "
                                    "on this worker; put the tk cache folder on shared storage (TK_CACHE_DIR)")
        return lite_extractor(job.shard_set.model_path)
    from toolkit.extract.external import is_external
    from toolkit.extract.weights import build_model

    model, _ = build_model(backbone, job.request, job.seed)
    if not is_external(model):
        from toolkit.extract.folding import fold_batch_norm  # imports Keras

        model = fold_batch_norm(model)
    return extractor_at(backbone, model, job.shard_set.precision, batch_size)
