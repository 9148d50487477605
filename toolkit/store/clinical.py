"""The ``clinical_*`` tables: the clinical columns of each run and their values (see ``m009_clinical``)."""

from __future__ import annotations

from typing import Any

from toolkit.ingest.clinical import ClinicalData
from toolkit.ingest.scan import ScannedImage
from toolkit.lazy import lazy_import
from toolkit.store.connection import Part
from toolkit.store.sql import arrow_view

pa = lazy_import("pyarrow")
pd = lazy_import("pandas")


def _split(value: Any) -> tuple[float | None, str | None]:
    """A typed clinical value as (value_num, value_text)."""
    if value is None:
        return None, None
    return (float(value), None) if isinstance(value, (int, float)) else (None, str(value))


class ClinicalReader(Part):
    """Reads the clinical columns and values of each run."""

    def run_clinical(self, run_id: str) -> tuple[dict[str, str], pd.DataFrame]:
        """A run's clinical columns (name -> kind, in the order they were given) and their values: one
        row per image of the run that has any, ``image_id`` then one column per clinical column
        (numeric as float, categorical as text; missing values NaN / None)."""
        if not self.db.table_exists("clinical_columns"):  # a store opened read-only before m009
            return {}, pd.DataFrame({"image_id": pd.Series([], dtype="int64")})
        kinds = dict(self.con.execute("SELECT name, kind FROM clinical_columns WHERE run_id = ? ORDER BY rowid",
                                      [run_id]).fetchall())
        values = self.db.query_df("SELECT image_id, name, kind, value_num, value_text FROM clinical WHERE run_id = ?",
                                  [run_id])
        frame = pd.DataFrame({"image_id": pd.Series(sorted(values["image_id"].unique()), dtype="int64")})
        for name, kind in kinds.items():
            rows = values[values["name"] == name]
            column = rows.set_index("image_id")["value_num" if kind == "numeric" else "value_text"]
            mapped = frame["image_id"].map(column)
            frame[name] = mapped.astype("float64") if kind == "numeric" else mapped.astype(object).where(mapped.notna(), None)
        return kinds, frame

    def run_clinical_columns(self, run_id: str) -> pd.DataFrame:
        """The ``clinical_columns`` rows of a run: name, kind, level, source (empty when none)."""
        if not self.db.table_exists("clinical_columns"):
            return pd.DataFrame(columns=["name", "kind", "level", "source"])
        return self.db.query_df("SELECT name, kind, level, source FROM clinical_columns WHERE run_id = ? ORDER BY rowid",
                                [run_id])


class Clinical(ClinicalReader):
    """Records clinical columns and values, per run."""

    def record_clinical(self, run_id: str, data: ClinicalData) -> None:
        """Store a run's clinical columns and its patient-level values, in one transaction (image-level
        values are written with the images, see :meth:`insert_image_values`)."""
        if not data.columns:
            return
        rows = [(run_id, patient, name, *_split(value))
                for name, values in data.patient_values.items() for patient, value in values.items()
                if patient is not None and value is not None]
        with self.db.transaction():
            self.con.executemany("INSERT INTO clinical_columns VALUES (?, ?, ?, ?, ?)",
                                 [(run_id, c.name, c.kind, c.level, c.source) for c in data.columns])
            if rows:
                self.con.executemany("INSERT INTO clinical_patient_values VALUES (?, ?, ?, ?, ?)", rows)

    def insert_image_values(self, run_id: str, images: list[ScannedImage]) -> None:
        """The image-level clinical values of ``images`` (already in ``images``), inside the caller's
        transaction: the same one that records the images for the run."""
        rows = [(str(i.record.path), name, *_split(value))
                for i in images for name, value in i.record.clinical.items() if value is not None]
        if not rows:
            return
        paths, names, numbers, texts = zip(*rows)
        table = pa.table({"path": pa.array(paths, pa.string()), "name": pa.array(names, pa.string()),
                          "value_num": pa.array(numbers, pa.float64()), "value_text": pa.array(texts, pa.string())})
        with arrow_view(self.con, table) as new:
            self.con.execute(f"""
                INSERT OR REPLACE INTO clinical_values
                SELECT ?, i.image_id, n.name, n.value_num, n.value_text FROM {new} n JOIN images i USING (path)""",
                             [run_id])
