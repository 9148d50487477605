"""Where an item's pixels come from: the one question extraction asks of an item.

Extraction needs each item's pixels at every input size the run's backbones take, and nothing else
about where they are kept. ``ImageFile`` answers for an image file: its bytes, checked against the
sha256 they were scanned with, decoded. A reader of whole-slide regions (a slide file and a region's
level-0 x, y, size and µm/px) answers the same question with the same method, and its pixels go
through the same decode -> embed -> write path (``toolkit.extract.batches``, ``toolkit.extract.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from toolkit.extract.stain import StainStep, decode
from toolkit.ingest.images import read_verified

if TYPE_CHECKING:
    from toolkit.ingest.scan import ScannedImage

Sizes = Sequence[tuple[tuple[int, int], str]]
"""The (input size as (height, width), resize rule) pairs a run's backbones take."""


class PixelSource(Protocol):
    """The pixels of one item (an image file, or a region of a larger image)."""

    def pixels(self, sizes: Sizes, stain: StainStep | None = None) -> list[np.ndarray]:
        """One uint8 RGB array ``(height, width, 3)`` per entry of ``sizes``, resized by its rule;
        stain-normalised once, at the item's own resolution, when ``stain`` is given.

        Raises ``toolkit.ingest.images.UnreadableImage`` with the reason in a few words when the
        pixels cannot be had (extraction reports the item and goes on with the others).
        """
        ...


@dataclass(frozen=True)
class ImageFile:
    """An image file whose content was hashed when it was scanned: only bytes with that sha256 are decoded,
    so a vector always belongs to the content it was computed from."""

    path: Path | str
    sha256: str

    def pixels(self, sizes: Sizes, stain: StainStep | None = None) -> list[np.ndarray]:
        """The file's pixels at each size (``PixelSource.pixels``); a file changed since its scan is unreadable."""
        return decode(read_verified(self.path, self.sha256), list(sizes), stain)


def pixel_source(image: ScannedImage) -> PixelSource:
    """Where the pixels of a scanned image are read from."""
    return ImageFile(image.record.path, image.sha256)
