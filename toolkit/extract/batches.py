"""Decoding in a bounded pool of threads, batch by batch, in order, a fixed number of batches ahead.

PIL decodes, resizes and zlib inflates without holding the GIL, so threads decode in parallel while
the networks run. Memory stays bounded whatever the number of items: at most ``prefetch`` batches
are being decoded or waiting while the caller holds one.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from toolkit.extract.pixels import PixelSource, Sizes
from toolkit.extract.stain import StainStep
from toolkit.ingest.images import UnreadableImage

PREFETCH = 2
"""Batches decoded ahead of the one the caller holds."""


@dataclass(frozen=True)
class DecodedBatch:
    """One batch of consecutive items: which decoded, their pixels, and why the others did not."""

    items: range  # positions in the sources, in order
    readable: list[int]  # the positions that decoded, in order
    pixels: list[np.ndarray]  # per entry of sizes: uint8 (len(readable), height, width, 3)
    unreadable: dict[int, str]  # position -> why its pixels could not be had


def _pixels(source: PixelSource, sizes: Sizes, stain: StainStep | None) -> list[np.ndarray] | str:
    """The source's pixels at every size, or why they cannot be had."""
    try:
        return source.pixels(sizes, stain)
    except UnreadableImage as exc:
        return str(exc)


def _batch(items: range, futures: list[Future], sizes: Sizes) -> DecodedBatch:
    """The batch of ``items`` once its futures are done; an error other than UnreadableImage propagates."""
    done = {index: future.result() for index, future in zip(items, futures)}
    readable = [index for index, got in done.items() if not isinstance(got, str)]
    pixels = [np.stack([done[index][k] for index in readable]) if readable
              else np.empty((0, *size, 3), np.uint8) for k, (size, _) in enumerate(sizes)]
    return DecodedBatch(items, readable, pixels, {index: got for index, got in done.items() if isinstance(got, str)})


def decoded_batches(sources: Sequence[PixelSource], sizes: Sizes, batch_size: int, threads: int,
                    stain: StainStep | None = None, prefetch: int = PREFETCH) -> Iterator[DecodedBatch]:
    """The sources' pixels at every size, ``batch_size`` items a batch, in order, decoded by ``threads``
    threads up to ``prefetch`` batches ahead of the one the caller holds.

    An unreadable item is left out of its batch's pixels with its reason; the others go on. Closing
    the iterator early cancels what has not started and waits for what has.
    """
    starts = iter(range(0, len(sources), batch_size))
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tk-decode")
    pending: deque[tuple[range, list[Future]]] = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            items = range(start, min(start + batch_size, len(sources)))
            pending.append((items, [pool.submit(_pixels, sources[i], sizes, stain) for i in items]))

    try:
        for _ in range(max(1, prefetch)):
            submit_next()
        while pending:
            items, futures = pending.popleft()
            submit_next()
            yield _batch(items, futures, sizes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
