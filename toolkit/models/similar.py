"""``tk similar``: nearest stored images to a query image by cosine similarity, in SQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from toolkit import console
from toolkit.errors import TkError
from toolkit.extract import stain as stain_normalisation
from toolkit.plugin.registry import Registry, load_registry
from toolkit.plugin.types import Backbone
from toolkit.extract.pipeline import embed_padded
from toolkit.extract.precision import query_extractor
from toolkit.ingest.scan import sha256_file
from toolkit.store import Store
from toolkit.extract.weights import build_model, request_for


def embed_one(backbone: Backbone, image: Path, kind: str, weights_id: str, path: str | None,
              precision: str = "fp32", quantised: tuple[str, str] | None = None,
              stain: stain_normalisation.StainStep | None = None) -> np.ndarray:
    """Embed a single image with the weights, precision and stain normalisation an embedding set was
    made with (``quantised``: the int8 model that made an int8 set)."""
    # a backbone with fixed weights (an encoder's file, a variant's model) finds them itself, wherever they are now
    request, seed = (backbone.fixed_weights, 0) if backbone.fixed_weights else request_for(kind, weights_id, path)
    model, resolved = build_model(backbone, request, seed)
    if resolved.weights_id != weights_id:
        raise TkError(f"weights now resolve to {resolved.weights_id}, but the store holds {weights_id}")
    extract, warning = query_extractor(backbone, model, precision, quantised)
    if warning:
        console.warn(warning)
    pixels = stain_normalisation.read_normalised(image, backbone.input_size, stain, backbone.resize)
    return embed_padded(extract, pixels[None], 1)[0]


def find_similar(store: Store, backbone: Backbone, image: Path, k: int = 10,
                 registry: Registry | None = None) -> pd.DataFrame:
    """The ``k`` stored images closest to ``image`` (rank, image_id, relpath, label, similarity); a new
    query image is stain-normalised as the stored set was (its normaliser from ``registry``)."""
    if not image.is_file():
        raise TkError(f"{image} does not exist; give the path of an image file")
    current = store.embeddings.current_set(backbone.name)
    if current is None:
        raise TkError(f"the store has no {backbone.name} embeddings; run `tk run --backbone {backbone.name}` first")
    embedding_set, kind, weights_path = current
    sha = sha256_file(image)
    query = store.embeddings.stored_vector(embedding_set, sha)
    if query is None:
        stain = stain_normalisation.for_set(store, registry or load_registry(), embedding_set.stain)
        query = embed_one(backbone, image, kind, embedding_set.weights_id, weights_path, embedding_set.precision,
                          store.embeddings.set_model(embedding_set), stain)
    return store.embeddings.nearest(embedding_set, query, k)

