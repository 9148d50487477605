"""Does an exported model still say the same thing? Parity of embeddings and predictions.

Plain cosine between embeddings is near 1 even for different images (they share a large mean
component), so embeddings are centred on the reference's mean first.
"""

from __future__ import annotations

import numpy as np


def centred_cosine(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-image cosine between ``other`` and ``reference`` after subtracting the reference mean."""
    mean = reference.mean(axis=0, keepdims=True)
    a, b = reference - mean, other - mean
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def similarity_rank_correlation(reference: np.ndarray, other: np.ndarray) -> float:
    """Spearman correlation of the pairwise (centred) cosine similarities of the two embeddings."""
    from scipy.stats import spearmanr

    def pairwise(x: np.ndarray) -> np.ndarray:
        x = x - reference.mean(axis=0, keepdims=True)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        upper = np.triu_indices(len(x), k=1)
        return (x @ x.T)[upper]

    if len(reference) < 3:
        return float("nan")
    return float(spearmanr(pairwise(reference), pairwise(other)).statistic)


def embedding_parity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Centred cosine (mean, min) and similarity rank correlation of two embeddings of the same images."""
    cosine = centred_cosine(reference.astype(np.float64), other.astype(np.float64))
    return {
        "centred_cosine_mean": float(cosine.mean()),
        "centred_cosine_min": float(cosine.min()),
        "similarity_rank_corr": similarity_rank_correlation(reference, other),
        "n_images": int(len(cosine)),
    }


def parity(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Embedding parity plus prediction agreement and max |Δp|."""
    found = embedding_parity(reference["embedding"], other["embedding"])
    agree = reference["probabilities"].argmax(axis=1) == other["probabilities"].argmax(axis=1)
    return {
        **{k: v for k, v in found.items() if k != "n_images"},
        "prediction_agreement": float(agree.mean()),
        "max_probability_diff": float(np.abs(reference["probabilities"] - other["probabilities"]).max()),
        "n_images": found["n_images"],
    }
