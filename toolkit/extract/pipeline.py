"""Streaming extraction: decode each image once, run every backbone that needs it, write per batch.

Memory stays bounded by the batch size and the prefetch depth, whatever the dataset size: each
item's pixels are read through its ``PixelSource`` (``toolkit.extract.pixels``) and decoded and
resized in a bounded pool of threads, a few batches ahead (``toolkit.extract.batches``), and each
batch's embeddings are written to the store in one transaction before the next is kept. TensorFlow
is imported only for a backbone that runs as a Keras model on it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from toolkit.extract.batches import decoded_batches
from toolkit.extract.external import ExternalModel, external_extractor
from toolkit.extract.memory import release_free_memory
from toolkit.extract.pixels import pixel_source
from toolkit.extract.stain import StainStep
from toolkit.extract.tfimport import tensorflow
from toolkit.ingest.scan import ScannedImage
from toolkit.plugin.types import Backbone
from toolkit.store import EmbeddingSet, EmbeddingWriter

BATCH_SIZE = 32


@dataclass
class BackboneJob:
    """One backbone of a run: its model, its embedding set and the hashes it still needs."""

    backbone: Backbone
    embedding_set: EmbeddingSet
    model: Any
    needed: set[str]
    seconds: float = 0.0
    embedded: int = 0
    extract: Callable[[Any], Any] | None = field(default=None, repr=False)
    error: str | None = None  # set when the backbone failed during extraction; it then embeds nothing more


def make_extractor(backbone: Backbone, model: Any, batch_size: int,
                   fold: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A graph-mode function with one fixed input shape (no retracing): uint8 batch -> embeddings
    (for a backbone with an ``extractor``, its function on the preprocessed batch in numpy).

    ``fold`` first merges each batch norm into the convolution before it (``toolkit.extract.folding``; the
    same embeddings, 1.05-1.26x faster, ``model`` itself unchanged). ``tk run`` folds its models
    once, when it builds them; folding costs up to 2.6 s, so one-off calls (a query image, 16
    parity images) leave it off.
    """
    if isinstance(model, ExternalModel):
        return external_extractor(backbone, model)
    tf = tensorflow()
    if fold:
        from toolkit.extract.folding import fold_batch_norm

        model = fold_batch_norm(model)

    height, width = backbone.input_size
    preprocess = tf.autograph.experimental.do_not_convert(backbone.preprocess)  # plain tensor code

    @tf.function(input_signature=[tf.TensorSpec([batch_size, height, width, 3], tf.uint8)], reduce_retracing=True)
    def extract(batch: tf.Tensor) -> tf.Tensor:  # float32 out, also from a bf16 model
        return tf.cast(model(preprocess(tf.cast(batch, tf.float32)), training=False), tf.float32)

    return lambda batch: extract(tf.constant(batch)).numpy()


def non_finite_error(job: BackboneJob, out: np.ndarray) -> str | None:
    """Why a batch of embeddings must not be stored (some are NaN or infinite), or None when all are finite."""
    bad = int((~np.isfinite(out)).any(axis=1).sum())
    if not bad:
        return None
    precision = job.embedding_set.precision
    hint = "check its model and weights" if precision == "fp32" else f"{precision} may overflow; try --precision fp32"
    return (f"backbone {job.backbone.name} ({precision}) gave NaN or infinite embeddings for {bad} of {len(out)} "
            f"images in a batch; none is stored and the backbone stops ({hint})")


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    padding = np.zeros((size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
    return np.concatenate([batch, padding])


def embed_padded(extract: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeddings of any number of images through a fixed-batch extractor."""
    chunks = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start:start + batch_size]
        chunks.append(extract(_pad(chunk, batch_size))[: len(chunk)])
    return np.concatenate(chunks)


def extract(images: list[ScannedImage], jobs: list[BackboneJob], writer: EmbeddingWriter, run_id: str,
            on_progress: Callable[[int], None], on_unreadable: Callable[[ScannedImage, str], None],
            batch_size: int = BATCH_SIZE, threads: int | None = None,
            stain: StainStep | None = None) -> list[ScannedImage]:
    """Embed every image some job needs, writing each batch (images + vectors) in one transaction.

    ``images`` holds one entry per distinct content; returns the images that decoded. A job whose
    batch holds a NaN or infinite vector stores none of it, gets its ``error`` and embeds no more.
    """
    threads = threads or max(2, os.cpu_count() or 2)
    sizes = sorted({(job.backbone.input_size, job.backbone.resize) for job in jobs})
    for job in jobs:
        if job.extract is None:  # a lowered-precision job brings its own (toolkit.extract.precision)
            job.extract = make_extractor(job.backbone, job.model, batch_size)
    done: list[ScannedImage] = []
    for batch in decoded_batches([pixel_source(image) for image in images], sizes, batch_size, threads, stain):
        for index, reason in batch.unreadable.items():
            on_unreadable(images[index], reason)
        good_images = [images[index] for index in batch.readable]
        vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]] = {}
        for job in jobs:
            rows = [k for k, image in enumerate(good_images) if image.sha256 in job.needed]
            if not rows or job.error:
                continue
            pixels = batch.pixels[sizes.index((job.backbone.input_size, job.backbone.resize))][rows]
            started = time.perf_counter()
            out = job.extract(_pad(pixels, batch_size))[: len(rows)]
            job.seconds += time.perf_counter() - started
            job.error = non_finite_error(job, out)
            if job.error:
                continue
            job.embedded += len(rows)
            vectors[job.embedding_set] = ([good_images[k].sha256 for k in rows], out)
        writer.write_batch(run_id, good_images, vectors)
        release_free_memory()  # keeps the process flat over hours of batches (toolkit.extract.memory)
        done.extend(good_images)
        on_progress(len(batch.items))
    return done
