"""Streaming extraction: decode each image once, run every backbone that needs it, write per batch.

Memory stays bounded by the batch size and the prefetch depth, whatever the dataset size: images
flow through a ``tf.data`` pipeline (parallel decode and resize in PIL threads, prefetch) and each
batch's embeddings are written to the store in one transaction before the next is kept.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from toolkit.ingest.images import UnreadableImage, read_verified
from toolkit.plugin.types import Backbone
from toolkit.extract.memory import release_free_memory
from toolkit.extract.stain import StainStep, decode as decode_image
from toolkit.ingest.scan import ScannedImage
from toolkit.store import EmbeddingSet, EmbeddingWriter
from toolkit.extract.tfimport import tensorflow

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
    tf = tensorflow()
    from toolkit.extract.external import ExternalModel, external_extractor

    if isinstance(model, ExternalModel):
        return external_extractor(backbone, model)
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


def decoded_batches(images: list[ScannedImage], sizes: list[tuple[tuple[int, int], str]], batch_size: int,
                    threads: int, stain: StainStep | None = None) -> Any:
    """A tf.data pipeline yielding (indices, ok flags, one uint8 batch per (input size, resize rule)).

    Each file is read once and decoded from the bytes whose sha256 matches the scanned one; a file
    changed since the scan is not decoded (its error says so). ``stain`` normalises each image once,
    at its own size, before it is resized (``toolkit.extract.stain``)."""
    tf = tensorflow()

    paths = [str(image.record.path) for image in images]
    errors: dict[int, str] = {}

    def decode(index: np.int64) -> tuple[np.ndarray, ...]:
        index = int(index)
        try:
            data = read_verified(paths[index], images[index].sha256)
            arrays = decode_image(data, sizes, stain)
            return (np.bool_(True), *arrays)
        except UnreadableImage as exc:
            errors[index] = str(exc)
            return (np.bool_(False), *[np.zeros((*size, 3), np.uint8) for size, _ in sizes])

    def tf_decode(index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        out = tf.numpy_function(decode, [index], [tf.bool, *[tf.uint8] * len(sizes)], stateful=False)
        shaped = [out[0]]
        for tensor, (size, _) in zip(out[1:], sizes):
            tensor.set_shape((*size, 3))
            shaped.append(tensor)
        return (index, *shaped)

    dataset = tf.data.Dataset.range(len(paths))
    dataset = dataset.map(tf_decode, num_parallel_calls=threads, deterministic=True)
    dataset = dataset.batch(batch_size).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False  # measured: autotune teardown sometimes stalls for ~18 s here
    options.threading.private_threadpool_size = threads
    dataset = dataset.with_options(options)
    return dataset, errors


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
    dataset, errors = decoded_batches(images, sizes, batch_size, threads, stain)
    done: list[ScannedImage] = []
    for index_batch, ok_batch, *pixel_batches in dataset.as_numpy_iterator():
        ok = np.asarray(ok_batch, dtype=bool)
        batch_images = [images[int(i)] for i in index_batch]
        for image, good, index in zip(batch_images, ok, index_batch):
            if not good:
                on_unreadable(image, errors.pop(int(index), "cannot decode"))
        good_images = [image for image, good in zip(batch_images, ok) if good]
        vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]] = {}
        for job in jobs:
            rows = [k for k, image in enumerate(batch_images) if ok[k] and image.sha256 in job.needed]
            if not rows or job.error:
                continue
            pixels = pixel_batches[sizes.index((job.backbone.input_size, job.backbone.resize))][rows]
            started = time.perf_counter()
            out = job.extract(_pad(pixels, batch_size))[: len(rows)]
            job.seconds += time.perf_counter() - started
            job.error = non_finite_error(job, out)
            if job.error:
                continue
            job.embedded += len(rows)
            vectors[job.embedding_set] = ([batch_images[k].sha256 for k in rows], out)
        writer.write_batch(run_id, good_images, vectors)
        release_free_memory()  # keeps the process flat over hours of batches (toolkit.extract.memory)
        done.extend(good_images)
        on_progress(len(batch_images))
    return done
