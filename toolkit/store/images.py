"""The ``images`` and ``run_images`` tables: one row per image file (as the latest run read it), and
the images of each run as that run read them (label, subtype, patient, content hash...)."""

from __future__ import annotations

from typing import Iterable

from toolkit.ingest.scan import KnownFile, ScannedImage
from toolkit.lazy import lazy_import
from toolkit.store.clinical import Clinical
from toolkit.store.connection import Connection, Part
from toolkit.store.migrations import RUN_IMAGE_COLUMNS
from toolkit.store.sql import arrow_view

pa = lazy_import("pyarrow")
pd = lazy_import("pandas")

IMAGE_COLUMNS = ("path", "relpath", "sha256", "source", "label", "subtype", "magnification",
                 "patient_id", "width", "height", "size_bytes", "mtime_ns")


def _images_to_arrow(images: list[ScannedImage]) -> pa.Table:
    rows = {
        "path": [str(i.record.path) for i in images],
        "relpath": [i.record.relpath for i in images],
        "sha256": [i.sha256 for i in images],
        "source": [i.record.source for i in images],
        "label": [i.record.label for i in images],
        "subtype": [i.record.subtype for i in images],
        "magnification": pa.array([i.record.magnification for i in images], pa.int32()),
        "patient_id": [i.record.patient_id for i in images],
        "width": pa.array([i.width for i in images], pa.int32()),
        "height": pa.array([i.height for i in images], pa.int32()),
        "size_bytes": pa.array([i.size_bytes for i in images], pa.int64()),
        "mtime_ns": pa.array([i.mtime_ns for i in images], pa.int64()),
    }
    return pa.table({name: pa.array(values, pa.string()) if not isinstance(values, pa.Array) else values
                     for name, values in rows.items()})


class ImagesReader(Part):
    """Reads ``images`` and ``run_images``."""

    def known_files(self) -> dict[str, KnownFile]:
        rows = self.con.execute("SELECT path, sha256, size_bytes, mtime_ns, width, height FROM images").fetchall()
        return {r[0]: KnownFile(r[1], r[2], r[3], r[4], r[5]) for r in rows if r[2] is not None}

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        """The file path of each image id."""
        return dict(self.con.execute("SELECT image_id, path FROM images WHERE image_id IN (SELECT unnest(?))",
                                     [list(map(int, image_ids))]).fetchall())

    def run_image_count(self, run_id: str) -> int:
        """How many images (files) a run analysed."""
        return int(self.db.one("SELECT count(*) FROM run_images WHERE run_id = ?", [run_id])[0])

    def run_contents(self, run_id: str) -> list[tuple[str, str]]:
        """One file path per distinct content of a run's images, with that content's sha256, ordered by sha256."""
        rows = self.con.execute("""SELECT any_value(i.path), r.sha256 FROM run_images r JOIN images i USING (image_id)
                                   WHERE r.run_id = ? GROUP BY r.sha256 ORDER BY r.sha256""", [run_id]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def run_images(self, run_id: str) -> pd.DataFrame:
        """Label, subtype, magnification and patient of every image of a run, as that run read them."""
        return self.db.query_df("SELECT label, subtype, magnification, patient_id FROM run_images WHERE run_id = ?",
                                [run_id])


class Images(ImagesReader):
    """Records images and the runs they belong to, with their image-level clinical values."""

    def __init__(self, db: Connection, clinical: Clinical) -> None:
        super().__init__(db)
        self.clinical = clinical

    def upsert(self, run_id: str, images: list[ScannedImage]) -> None:
        """Record ``images`` for a run, inside the caller's transaction (the one that writes their embeddings)."""
        if not images:
            return
        with arrow_view(self.con, _images_to_arrow(images)) as new:
            columns = ", ".join(IMAGE_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in IMAGE_COLUMNS if c != "path")
            self.con.execute(f"""
                INSERT INTO images ({columns})
                SELECT {columns} FROM {new}
                ON CONFLICT (path) DO UPDATE SET {updates}""")
            mine = ", ".join(RUN_IMAGE_COLUMNS)
            self.con.execute(f"""
                INSERT INTO run_images (run_id, image_id, {mine})
                SELECT ?, i.image_id, {", ".join(f"n.{c}" for c in RUN_IMAGE_COLUMNS)}
                FROM {new} n JOIN images i USING (path)
                ON CONFLICT (run_id, image_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in RUN_IMAGE_COLUMNS)}""",
                             [run_id])
        self.clinical.insert_image_values(run_id, images)

    def add_images(self, run_id: str, images: list[ScannedImage]) -> None:
        """Record images that need no extraction (their content is already embedded)."""
        with self.db.transaction():
            self.upsert(run_id, images)
