"""The DuckDB store: the only place in tk that writes SQL (besides ``tk sql``)."""

from toolkit.store.embeddings import EmbeddingSet, EmbeddingWriter
from toolkit.store.migrations import MIGRATIONS
from toolkit.store.sql import identifier
from toolkit.store.store import Store, StoreReader
from toolkit.store.tables import TableRows, TableSpec

__all__ = ["MIGRATIONS", "EmbeddingSet", "EmbeddingWriter", "Store", "StoreReader", "TableRows", "TableSpec",
           "identifier"]
