"""Reading images safely: header checks, pixel limits and conversion of any mode to 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from toolkit.errors import TkError

MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused before decoding (decompression-bomb guard)."""
MIN_SIDE = 32
"""Images narrower or lower than this many pixels are refused: too small to embed meaningfully."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


EXIF_ORIENTATION = 0x0112
"""The EXIF tag saying how a viewer turns the stored pixels; 5 to 8 swap width and height."""


class UnreadableImage(Exception):
    """The file is not an image tk can embed; the message says why in a few words."""


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 to 8; 1, the default, means as stored)."""
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_size(path: Path) -> tuple[int, int]:
    """Width and height from the header, without decoding pixels; refuses unusable sizes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if orientation(image) >= 5:  # as every viewer shows it: turned a quarter
                    width, height = height, width
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(_describe(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot read the image header ({exc}); the file is damaged: copy it again") from exc
    if width * height > MAX_PIXELS:
        raise UnreadableImage(f"refused before decoding: {width}x{height} px exceeds the {MAX_PIXELS:,} pixel limit; "
                              "tile it into smaller images first")
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(f"{width}x{height} px is smaller than {MIN_SIDE} px on a side; too small to embed, remove it")
    return width, height


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (unknown format); remove it or convert it to PNG"
    return f"refused before decoding: {str(exc).rstrip('.')}; tile it into smaller images first"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit scaled down, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        return _float_to_rgb(np.asarray(image, dtype=np.float64))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def read_verified(path: Path | str, sha256: str) -> bytes:
    """The bytes of ``path``, read once, provided they still hash to ``sha256`` (the scanned content).

    Decoding these same bytes guarantees a vector always belongs to the content it was computed from,
    even when the file is replaced between scanning and reading.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"cannot read file ({exc.strerror or exc})") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UnreadableImage("changed since it was scanned; run again")
    return data


def _float_to_rgb(array: np.ndarray) -> Image.Image:
    """A float image stretched to 0-255 over its finite values (NaN and infinite pixels drawn at the
    minimum); refuses an image without one finite pixel rather than embed it as black."""
    finite = np.isfinite(array)
    if not finite.any():
        raise UnreadableImage("every pixel is NaN or infinite (a float image without data); export it again")
    low, high = float(array[finite].min()), float(array[finite].max())
    scaled = (np.where(finite, array, low) - low) / max(high - low, 1e-12) * 255
    return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")


def _centre_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred box of ``image_size`` (width, height) with the aspect of ``size`` (height, width)."""
    width, height = image_size
    scale = min(width / size[1], height / size[0])
    crop_w, crop_h = max(1, round(size[1] * scale)), max(1, round(size[0] * scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """A uint8 RGB array resized to ``size`` = (height, width) the way ``load_rgb`` resizes."""
    image = Image.fromarray(rgb)
    return np.asarray(_resized(image, size, resize), dtype=np.uint8)


def _resized(image: Image.Image, size: tuple[int, int], resize: str) -> Image.Image:
    """``image`` cut to the largest centred box of ``size``'s aspect (``center-crop``) and resized to
    ``size`` = (height, width)."""
    height, width = size
    if resize == "center-crop":
        image = image.crop(_centre_box(image.size, size))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return image


def load_rgb(path: Path | str | bytes, size: tuple[int, int] | None, resize: str = "stretch") -> np.ndarray:
    """Decode ``path`` (or a file's bytes), turned as its EXIF orientation says (as every viewer shows it),
    and resize it to ``size`` = (height, width), or keep its own size for None; uint8 array (h, w, 3).
    ``resize="center-crop"`` first cuts out the largest centred box of that aspect (torchvision's
    Resize + CenterCrop)."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        with Image.open(source) as image:
            turn = orientation(image)
            if image.format == "JPEG" and size is not None:
                image.draft("RGB", (size[0], size[1]) if turn >= 5 else (size[1], size[0]))
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image) if turn != 1 else image)
            if size is not None:
                rgb = _resized(rgb, size, resize)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(_describe(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot decode ({exc}); the file is damaged: copy or export it again") from exc


def read_image(path: Path | str, size: tuple[int, int] | None, resize: str = "stretch") -> np.ndarray:
    """Check and decode one image file for a model input ``size``, or raise a one-line TkError naming it."""
    try:
        read_size(Path(path))
        return load_rgb(path, size, resize)
    except (UnreadableImage, FileNotFoundError) as exc:
        raise TkError(f"{path}: {exc}") from exc
