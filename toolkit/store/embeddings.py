"""Embedding sets: one table per backbone, weights, precision and stain normalisation, keyed by the
image content's sha256.

Embeddings live in ``emb_<backbone>__<weights>[_<precision>][_stain_<stain>]`` (``sha256`` -> ``FLOAT[dim]``) and a
view per backbone, ``embeddings_<backbone>``, joins them to ``images`` for the weights used last.
Writers go through ``EmbeddingWriter`` so that another producer (Parquet shards from a cluster)
can be added without touching the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import numpy as np

from toolkit.errors import TkError
from toolkit.ingest.scan import ScannedImage
from toolkit.lazy import lazy_import
from toolkit.store.connection import Connection, Part
from toolkit.store.images import Images
from toolkit.store.sql import arrow_view, identifier

pa = lazy_import("pyarrow")
pd = lazy_import("pandas")


@dataclass(frozen=True)
class EmbeddingSet:
    """Where one backbone's embeddings for one set of weights, at one precision, of images with one
    stain normalisation, live.

    fp32 sets of raw images keep the names they always had; ``bf16`` and ``int8`` sets add the
    precision (``emb_resnet50__random_seed0_int8``) and stain-normalised sets the stain id
    (``emb_resnet50__random_seed0_stain_macenko_1a2b3c4d``), so such vectors never mix.
    """

    backbone: str
    weights_id: str
    dim: int
    precision: str = "fp32"
    stain: str = "none"  # ``<method>-<sha8 of its reference>`` (toolkit.extract.stain), or none

    @property
    def table(self) -> str:
        suffix = "" if self.precision == "fp32" else f"_{identifier(self.precision)}"
        suffix += "" if self.stain == "none" else f"_stain_{identifier(self.stain)}"
        return f"emb_{identifier(self.backbone)}__{identifier(self.weights_id)}{suffix}"

    @property
    def label(self) -> str:
        """``weights_id``, with the precision when it is not fp32 and the stain when there is one (for messages)."""
        return " ".join([self.weights_id, *([self.precision] if self.precision != "fp32" else []),
                         *([f"stain {self.stain}"] if self.stain != "none" else [])])


class EmbeddingWriter(Protocol):
    """What extraction needs from a store; a Parquet-shard writer can implement the same."""

    def missing(self, embedding_set: EmbeddingSet, sha256s: Iterable[str]) -> set[str]:
        """The hashes not yet embedded in ``embedding_set``."""

    def write_batch(self, run_id: str, images: list[ScannedImage],
                    vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]]) -> None:
        """Write images and their embeddings in one transaction."""


def _vectors_to_arrow(shas: list[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return pa.table({"sha256": pa.array(shas, pa.string()), "vector": column})


class EmbeddingsReader(Part):
    """Reads embedding sets and their vectors."""

    def missing(self, embedding_set: EmbeddingSet, sha256s: Iterable[str]) -> set[str]:
        wanted = sorted(set(sha256s))
        if not wanted or not self.db.table_exists(embedding_set.table):
            return set(wanted)
        with arrow_view(self.con, pa.table({"sha256": wanted})) as view:
            rows = self.con.execute(f"SELECT w.sha256 FROM {view} w ANTI JOIN {embedding_set.table} e USING (sha256)").fetchall()
        return {r[0] for r in rows}

    def current_set(self, backbone: str) -> tuple[EmbeddingSet, str, str | None] | None:
        """The set the ``embeddings_<backbone>`` view shows, with its weights kind and file path."""
        row = self.db.one(
            "SELECT s.backbone, s.weights_id, s.dim, s.precision, s.stain, s.weights_kind, s.weights_path FROM run_backbones rb "
            "JOIN runs r USING (run_id) JOIN embedding_sets s ON s.table_name = rb.table_name "
            "WHERE rb.backbone = ? AND rb.status = 'ok' ORDER BY r.started_at DESC LIMIT 1", [backbone])
        return (EmbeddingSet(*row[:5]), row[5], row[6]) if row else None

    def set_model(self, embedding_set: EmbeddingSet) -> tuple[str, str] | None:
        """The quantised model (path, sha256) recorded as the maker of an int8 set, if any."""
        row = self.db.one("SELECT model_path, model_sha256 FROM embedding_sets WHERE table_name = ?", [embedding_set.table])
        return (row[0], row[1]) if row and row[0] else None

    def last_parity(self, embedding_set: EmbeddingSet) -> dict[str, Any]:
        """The parity against fp32 recorded by the latest run that measured it for this set."""
        row = self.db.one("SELECT rb.parity_centred_cosine_mean, rb.parity_centred_cosine_min, rb.parity_rank_corr, "
                          "rb.parity_n_images FROM run_backbones rb JOIN runs r USING (run_id) WHERE rb.table_name = ? "
                          "AND rb.parity_n_images IS NOT NULL ORDER BY r.started_at DESC LIMIT 1", [embedding_set.table])
        keys = ("centred_cosine_mean", "centred_cosine_min", "similarity_rank_corr", "n_images")
        return dict(zip(keys, row)) if row else {}

    def run_embeddings(self, run_id: str, embedding_set: EmbeddingSet) -> tuple[pd.DataFrame, np.ndarray]:
        """Metadata (as the run read it) and embeddings of the images of a run, ordered by image_id."""
        relation = self.con.sql(f"""
            SELECT r.image_id, r.sha256, r.relpath, r.label, r.subtype, r.magnification, r.patient_id,
                   r.width, r.height, e.vector
            FROM run_images r JOIN {embedding_set.table} e USING (sha256)
            WHERE r.run_id = $run_id ORDER BY r.image_id""", params={"run_id": run_id})
        # DuckDB 2 renamed fetch_arrow_table to to_arrow_table
        table = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.fetch_arrow_table()
        vectors = table.column("vector").combine_chunks()
        flat = vectors.values.to_numpy(zero_copy_only=False) if len(vectors) else np.zeros(0, np.float32)
        matrix = np.asarray(flat, dtype=np.float32).reshape(len(vectors), embedding_set.dim)
        return table.drop_columns(["vector"]).to_pandas(), matrix

    def stored_vector(self, embedding_set: EmbeddingSet, sha256: str) -> np.ndarray | None:
        """The stored embedding of one content, or None."""
        if not self.db.table_exists(embedding_set.table):
            return None
        row = self.db.one(f"SELECT vector FROM {embedding_set.table} WHERE sha256 = ?", [sha256])
        return np.asarray(row[0], dtype=np.float32) if row else None

    def nearest(self, embedding_set: EmbeddingSet, query: np.ndarray, k: int) -> pd.DataFrame:
        """The ``k`` images (of the set's backbone view) with the largest cosine similarity to
        ``query``: rank, image_id, relpath, label, subtype, similarity."""
        view = f"embeddings_{identifier(embedding_set.backbone)}"
        dim = int(embedding_set.dim)
        return self.db.query_df(f"""
            SELECT row_number() OVER (ORDER BY similarity DESC, image_id) AS rank, * FROM (
                SELECT e.image_id, i.relpath, i.label, i.subtype,
                       array_cosine_similarity(e.vector, ?::FLOAT[{dim}]) AS similarity
                FROM {view} e JOIN images i USING (image_id)
                ORDER BY similarity DESC, e.image_id LIMIT ?)
            ORDER BY rank""", [query.astype(np.float32).tolist(), int(k)])

    def weights_path(self, backbone: str, weights_id: str) -> str | None:
        """The local weights file an embedding set was made with, if any."""
        row = self.db.one("SELECT weights_path FROM embedding_sets WHERE backbone = ? AND weights_id = ?",
                          [backbone, weights_id])
        return row[0] if row else None


class Embeddings(EmbeddingsReader):
    """Creates embedding sets and writes their vectors (with the images they embed)."""

    def __init__(self, db: Connection, images: Images) -> None:
        super().__init__(db)
        self.images = images

    def ensure_set(self, embedding_set: EmbeddingSet, weights_kind: str, weights_sha256: str | None,
                   weights_path: str | None, model_path: str | None = None,
                   model_sha256: str | None = None) -> list[str]:
        """Create the set's table if it is new; returns the backbone's other weights (and precisions)
        already stored (empty when the set existed or is the backbone's first). ``model_path`` is the
        quantised model that makes an int8 set, kept so that later runs add to it with the same model."""
        row = self.db.one("SELECT dim FROM embedding_sets WHERE table_name = ?", [embedding_set.table])
        if row is not None:
            if row[0] != embedding_set.dim:
                raise TkError(f"embedding set {embedding_set.table} holds {row[0]}-d vectors but "
                              f"{embedding_set.backbone} now gives {embedding_set.dim}-d; use another --store")
            return []
        others = [EmbeddingSet(embedding_set.backbone, r[0], embedding_set.dim, r[1], r[2]).label for r in self.con.execute(
            "SELECT weights_id, precision, stain FROM embedding_sets WHERE backbone = ? ORDER BY created_at",
            [embedding_set.backbone]).fetchall()]
        with self.db.transaction():
            self.con.execute(f"""CREATE TABLE {embedding_set.table} (
                sha256 VARCHAR PRIMARY KEY,
                vector FLOAT[{int(embedding_set.dim)}] NOT NULL,
                run_id VARCHAR,
                created_at TIMESTAMP DEFAULT current_timestamp)""")
            self.con.execute("INSERT INTO embedding_sets (table_name, backbone, weights_id, weights_kind, weights_sha256, "
                             "weights_path, dim, precision, model_path, model_sha256, stain) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [embedding_set.table, embedding_set.backbone, embedding_set.weights_id,
                              weights_kind, weights_sha256, weights_path, embedding_set.dim,
                              embedding_set.precision, model_path, model_sha256, embedding_set.stain])
        return others

    def write_batch(self, run_id: str, images: list[ScannedImage],
                    vectors: dict[EmbeddingSet, tuple[list[str], np.ndarray]]) -> None:
        """Write images and their embeddings in one transaction; a NaN or infinite vector writes nothing."""
        with self.db.transaction():
            for embedding_set, (shas, array) in vectors.items():
                if not shas:
                    continue
                if not np.isfinite(array).all():  # keyed by content, a bad vector would be reused by every run
                    raise TkError(f"{embedding_set.backbone} ({embedding_set.precision}) gave NaN or infinite "
                                  "embeddings; they are never stored")
                with arrow_view(self.con, _vectors_to_arrow(shas, array)) as batch:
                    self.con.execute(f"INSERT OR IGNORE INTO {embedding_set.table} (sha256, vector, run_id) "
                                     f"SELECT sha256, vector::FLOAT[{int(embedding_set.dim)}], ? FROM {batch}", [run_id])
            self.images.upsert(run_id, images)

    def point_view(self, embedding_set: EmbeddingSet) -> None:
        """Make ``embeddings_<backbone>`` show this set (the weights used last)."""
        view = f"embeddings_{identifier(embedding_set.backbone)}"
        self.con.execute(f"""CREATE OR REPLACE VIEW {view} AS
            SELECT i.image_id, e.sha256, e.vector FROM images i JOIN {embedding_set.table} e USING (sha256)""")

    def record_set_model(self, embedding_set: EmbeddingSet, path: str, sha256: str) -> None:
        self.con.execute("UPDATE embedding_sets SET model_path = ?, model_sha256 = ? WHERE table_name = ?",
                         [path, sha256, embedding_set.table])
