"""Shared statistics helpers, and the synthetic embeddings the other statistics tests build on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from toolkit.plugin.settings import NoSettings
from toolkit.plugin.types import AnalysisContext
from toolkit.stats import bh_qvalues, group_sums, patient_means, top_rows

SUBTYPES = {"benign": ["adenosis", "fibroadenoma"], "malignant": ["ductal_carcinoma", "lobular_carcinoma"]}
MAGNIFICATIONS = (40, 100, 200, 400)
# Benjamini & Hochberg (1995), section 3.2: 15 p-values of which 4 are rejected at q = 0.05
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
           0.6528, 0.7590, 1.000]
SIGNAL_FEATURES = 5


def synthetic_metadata(n_patients: int, per_patient: int, seed: int = 0) -> pd.DataFrame:
    """BreakHis-like metadata: one label and subtype per patient (a third benign), magnifications cycling."""
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n_patients) % 3 == 0, "benign", "malignant")
    subtypes = [SUBTYPES[label][i // 3 % 2] for i, label in enumerate(labels)]
    rows = n_patients * per_patient
    patient = np.repeat(np.arange(n_patients), per_patient)
    return pd.DataFrame({
        "image_id": np.arange(1, rows + 1), "sha256": [f"{i:064x}" for i in range(rows)],
        "relpath": [f"img{i}.png" for i in range(rows)], "label": labels[patient],
        "subtype": np.asarray(subtypes)[patient], "magnification": np.resize(MAGNIFICATIONS, rows),
        "patient_id": [f"14-{1000 + p}" for p in patient], "width": 700, "height": 460,
    }).sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)


def synthetic_embeddings(metadata: pd.DataFrame, dim: int, signal: float, seed: int = 0) -> np.ndarray:
    """Noise plus a per-patient offset, with ``signal`` added to the first features of malignant images."""
    rng = np.random.default_rng(seed)
    codes, patients = pd.factorize(metadata["patient_id"])
    offsets = rng.normal(0, 0.5, (len(patients), dim))
    x = rng.normal(0, 1, (len(metadata), dim)) + offsets[codes]
    x[:, :SIGNAL_FEATURES] += signal * (metadata["label"] == "malignant").to_numpy()[:, None]
    return np.abs(x).astype(np.float32)  # non-negative, like pooled ReLU features


def synthetic_context(n_patients: int = 24, per_patient: int = 12, dim: int = 32, signal: float = 1.5,
                      seed: int = 0, settings: Any = None, backbones: tuple[str, ...] = ("demo",),
                      ) -> AnalysisContext:
    """An AnalysisContext on synthetic data, no TensorFlow; several backbones share the metadata.
    ``settings`` is the analysis' settings instance (``TtestSettings()``, say), as the runner gives it."""
    metadata = synthetic_metadata(n_patients, per_patient, seed)
    embeddings = {name: synthetic_embeddings(metadata, dim + 8 * i, signal, seed + i) for i, name in enumerate(backbones)}
    first = backbones[0] if len(backbones) == 1 else None
    return AnalysisContext(run_id="test", backbone=first, embeddings=embeddings[first] if first else None,
                           metadata=metadata, all_embeddings=embeddings,
                           settings=settings if settings is not None else NoSettings(), seed=seed)


def test_bh_reproduces_benjamini_hochberg_1995():
    q = bh_qvalues(np.array(BH_1995))
    assert int((q < 0.05).sum()) == 4
    assert np.flatnonzero(q < 0.05).tolist() == [0, 1, 2, 3]
    assert q[3] == pytest.approx(0.0095 * 15 / 4, abs=1e-12)


def test_bh_matches_statsmodels_and_ignores_nan():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5])
    q = bh_qvalues(p)
    assert np.isnan(q[1])
    expected = multipletests(p[~np.isnan(p)], method="fdr_bh")[1]
    np.testing.assert_allclose(q[~np.isnan(p)], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(expected, [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_group_sums_and_patient_means():
    x = np.arange(12, dtype=float).reshape(6, 2)
    sums, counts = group_sums(x, np.array([0, 1, 0, -1, 1, 1]), 2)
    np.testing.assert_array_equal(sums, [[4, 6], [20, 23]])
    np.testing.assert_array_equal(counts, [2, 3])
    meta = pd.DataFrame({"patient_id": ["p1", "p1", "p2", "p2", "p2", None],
                         "label": ["a", "b", "a", "a", "a", "a"]})
    view = patient_means(x, meta, "label")
    assert view.level == "patient" and view.groups.tolist() == ["a", "b", "a"]
    np.testing.assert_array_equal(view.x, [[0, 1], [2, 3], [6, 7]])


def test_top_rows_ranks_by_absolute_value_within_groups():
    frame = pd.DataFrame({"level": ["i", "i", "i", "p", "p"], "g": [0.1, -3.0, 2.0, 0.5, -0.2]})
    assert top_rows(frame, "g", 2, ["level"])["g"].tolist() == [-3.0, 2.0, 0.5, -0.2]
