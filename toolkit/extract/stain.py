"""Stain normalisation before embedding (``tk run --stain NAME [--stain-reference IMAGE]``).

A ``StainStep`` is one normaliser (a plugin's ``StainNormaliser``) with its fitted reference state.
Extraction applies it to every decoded image at the image's own resolution, before resizing to each
backbone's input size (so the stain statistics are those of the whole image, and every backbone,
precision and query sees the same pixels). Its id, ``<method>-<sha8 of the state>``, is part of the
embedding set's key; the state is kept in ``stain_references`` so ``tk similar`` normalises a query
image exactly as the set it compares against was normalised. Each run that normalised records, in
``stain_runs``, how many images it normalised, how many were left unchanged (blank or single-stain
tiles) and a strip of thumbnails before and after for the report.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from toolkit.errors import TkError
from toolkit.ingest.images import UnreadableImage, load_rgb, read_image, resize_rgb
from toolkit.ingest.scan import sha256_file
from toolkit.plugin.types import StainNormaliser
from toolkit.store.tables import TableSpec

if TYPE_CHECKING:
    from toolkit.ingest.scan import ScannedImage
    from toolkit.plugin.registry import Registry
    from toolkit.store import Store

NONE = "none"
STRIP_IMAGES = 6
THUMBNAIL = 136  # the longest side of a strip thumbnail, in pixels (six fit the report's width)

REFERENCES = TableSpec("stain_references", {
    "stain_id": "VARCHAR", "method": "VARCHAR", "reference_path": "VARCHAR", "reference_sha256": "VARCHAR",
    "state": "JSON", "created_at": "TIMESTAMP DEFAULT current_timestamp"}, key=("stain_id",))
RUNS = TableSpec("stain_runs", {
    "run_id": "VARCHAR", "stain_id": "VARCHAR", "method": "VARCHAR", "reference_path": "VARCHAR",
    "n_normalised": "INTEGER", "n_unchanged": "INTEGER", "seconds": "DOUBLE", "strip": "JSON"},
    key=("run_id",), summary=("run_id", "stain_id", "n_normalised", "n_unchanged", "seconds"))


@dataclass
class StainStep:
    """A normaliser with its reference state, counting what it did (thread-safe: decoding runs in
    parallel threads)."""

    normaliser: StainNormaliser
    state: dict[str, Any]
    stain_id: str
    reference_path: str | None = None
    reference_sha256: str | None = None
    n_normalised: int = 0
    n_unchanged: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def transform(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """One image ``(h, w, 3)`` uint8, normalised, and whether it was left unchanged. A plugin
        error makes the image unreadable (skipped, with the reason); non-finite output leaves the
        image unchanged."""
        try:
            out = np.asarray(self.normaliser.apply(rgb[None], self.state))
        except Exception as exc:
            raise UnreadableImage(f"stain normaliser {self.normaliser.name} failed: {type(exc).__name__}: {exc}") from exc
        if out.shape != (1, *rgb.shape):
            raise UnreadableImage(f"stain normaliser {self.normaliser.name} returned shape {out.shape} for an "
                                  f"image of shape {(1, *rgb.shape)}; it must keep the batch's shape")
        if not np.isfinite(out).all():
            return rgb, True
        normalised = np.clip(np.rint(out[0]), 0, 255).astype(np.uint8)
        return normalised, bool(np.array_equal(normalised, rgb))

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """``transform``, counted and timed."""
        started = time.perf_counter()
        out, unchanged = self.transform(rgb)
        with self._lock:
            self.seconds += time.perf_counter() - started
            self.n_normalised += 1
            self.n_unchanged += int(unchanged)
        return out


def decode(data: bytes | str | Path, sizes: list[tuple[tuple[int, int], str]],
           step: StainStep | None) -> list[np.ndarray]:
    """One image decoded for each (input size, resize rule) of ``sizes``: normalised once, at its own
    size, when ``step`` is given."""
    if step is None:
        return [load_rgb(data, size, rule) for size, rule in sizes]
    normalised = step.normalise(load_rgb(data, None))
    return [resize_rgb(normalised, size, rule) for size, rule in sizes]


def read_normalised(path: Path, size: tuple[int, int], step: StainStep | None, resize: str = "stretch") -> np.ndarray:
    """A query image file for a model input ``size`` (resized by the backbone's ``resize`` rule),
    normalised like the set it is compared with; errors are one line naming the file."""
    if step is None:
        return read_image(path, size, resize)
    try:
        return resize_rgb(step.normalise(read_image(path, None)), size, resize)
    except UnreadableImage as exc:
        raise TkError(f"{path}: {exc}") from exc


def prepare(method: str, reference: Path | None, registry: Registry) -> StainStep | None:
    """The step ``--stain METHOD --stain-reference IMAGE`` asks for (None for ``none``, which takes no
    reference: :class:`toolkit.run.settings.RunSettings` refuses one)."""
    if method == NONE:
        return None
    if method not in registry.stain_normalisers:
        known = ", ".join([NONE, *sorted(registry.stain_normalisers)])
        raise TkError(f"--stain {method}: no such stain normaliser; available: {known} (see `tk plugins`)")
    normaliser = registry.stain_normalisers[method]
    if reference is None:
        if normaliser.default_state is None:
            raise TkError(f"--stain {method} has no built-in reference; give one with --stain-reference IMAGE")
        return _step(normaliser, normaliser.default_state)
    pixels = read_image(Path(reference), None)
    try:
        state = normaliser.fit(pixels)
    except TkError:
        raise
    except Exception as exc:  # a plugin's bug, said in one line with the file it choked on
        raise TkError(f"--stain-reference {reference}: {method} could not fit it ({type(exc).__name__}: {exc}); "
                      "choose another reference image") from exc
    return _step(normaliser, state, str(reference), sha256_file(Path(reference)))


def _step(normaliser: StainNormaliser, state: dict[str, Any], path: str | None = None,
          sha256: str | None = None) -> StainStep:
    try:
        text = json.dumps(state, sort_keys=True, default=_plain)
    except (TypeError, ValueError) as exc:
        raise TkError(f"stain normaliser {normaliser.name}: its reference state must be numbers and lists "
                      f"(JSON), not {exc}") from exc
    digest = hashlib.sha256(f"{normaliser.name}\0{text}".encode()).hexdigest()[:8]
    return StainStep(normaliser, json.loads(text), f"{normaliser.name}-{digest}", path, sha256)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def remember(store: Store, step: StainStep) -> None:
    """Keep the step's reference state with its id, for the queries that must match the set."""
    if not store.tables.rows(REFERENCES, {"stain_id": step.stain_id}).empty:
        return
    store.tables.insert_rows(REFERENCES, [{"stain_id": step.stain_id, "method": step.normaliser.name,
                                    "reference_path": step.reference_path, "reference_sha256": step.reference_sha256,
                                    "state": json.dumps(step.state)}])


def for_set(store: Store, registry: Registry, stain_id: str) -> StainStep | None:
    """The step an embedding set was made with (None for raw images), to normalise a query the same way."""
    if stain_id == NONE:
        return None
    found = store.tables.rows(REFERENCES, {"stain_id": stain_id})
    if found.empty:
        raise TkError(f"the store does not hold the reference of stain normalisation {stain_id}; "
                      "re-run `tk run --stain ...` with this store")
    row = found.iloc[0]
    state = row["state"] if isinstance(row["state"], dict) else json.loads(row["state"])
    return restore({"id": stain_id, "method": row["method"], "state": state}, registry, row["reference_path"],
                   row["reference_sha256"])


def describe(step: StainStep) -> dict[str, Any]:
    """What an exported model's metadata says about the normalisation its inputs need (``restore`` reads it)."""
    return {"id": step.stain_id, "method": step.normaliser.name, "state": step.state}


def restore(described: dict[str, Any], registry: Registry, reference_path: str | None = None,
            reference_sha256: str | None = None) -> StainStep:
    """The step ``describe`` (or the store) recorded, with its method from the loaded plugins."""
    method = described["method"]
    if method not in registry.stain_normalisers:
        raise TkError(f"the embeddings were stain-normalised with {method!r}, which is not loaded; "
                      "load its plugin with --plugin")
    return StainStep(registry.stain_normalisers[method], described["state"], described["id"], reference_path,
                     reference_sha256)


def record_run(store: Store, run_id: str, step: StainStep, images: Iterable[ScannedImage]) -> None:
    """Record what the run's normalisation did, with the report's strip of thumbnails before and after."""
    store.tables.replace_rows(RUNS, [{"run_id": run_id, "stain_id": step.stain_id, "method": step.normaliser.name,
                               "reference_path": step.reference_path, "n_normalised": step.n_normalised,
                               "n_unchanged": step.n_unchanged, "seconds": step.seconds,
                               "strip": json.dumps(strip(step, images))}], {"run_id": run_id})


def strip(step: StainStep, images: Iterable[ScannedImage], n: int = STRIP_IMAGES) -> list[dict[str, Any]]:
    """Thumbnails (base64 PNG) of up to ``n`` of the images, spread over the labels, before and after
    normalisation; each with its label and whether it was left unchanged. No path: it may name a patient."""
    chosen = _spread(sorted({i.sha256: i for i in images}.values(), key=lambda i: i.record.relpath), n)
    entries = []
    for image in chosen:
        try:
            before = load_rgb(image.record.path, None)
            after, unchanged = step.transform(before)
        except (UnreadableImage, OSError):  # said already, when it was skipped
            continue
        entries.append({"label": image.record.label or "", "before": _thumbnail(before), "after": _thumbnail(after),
                        "unchanged": unchanged})
    return entries


def _spread(images: list[ScannedImage], n: int) -> list[ScannedImage]:
    """Up to ``n`` images, taking the labels in turn so that every class shows."""
    by_label: dict[str, list[ScannedImage]] = {}
    for image in images:
        by_label.setdefault(image.record.label or "", []).append(image)
    chosen: list[ScannedImage] = []
    while len(chosen) < n and any(by_label.values()):
        for group in by_label.values():
            if group and len(chosen) < n:
                chosen.append(group.pop(0))
    return chosen


def _thumbnail(rgb: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
