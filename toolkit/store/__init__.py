"""The DuckDB store: the only place in tk that writes SQL (besides ``tk sql``)."""

from toolkit.store.migrations import MIGRATIONS
from toolkit.store.sql import identifier
from toolkit.store.store import EmbeddingSet, EmbeddingWriter, Store

__all__ = ["MIGRATIONS", "EmbeddingSet", "EmbeddingWriter", "Store", "identifier"]
