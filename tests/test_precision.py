"""``tk run --precision fp32|bf16|int8`` with the tiny backbone: separate embedding sets, re-runs,
recorded parity against fp32, and the fp32 fast path against a plain model call."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.conftest import TINY, run_tk_reporting_tensorflow, tk
from tests.datasets import image_path, tile


def _run(breakhis, store, *extra):
    return tk("run", breakhis, "--backbone", "tiny", "--weights", "random", "--store", store,
              "--analysis", "none", "--export", "none", "--plugin", TINY, *extra)


def _vectors(con, table):
    rows = con.execute(f"SELECT sha256, vector FROM {table} ORDER BY sha256").fetchall()
    return [r[0] for r in rows], np.asarray([r[1] for r in rows], dtype=np.float64)


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_int8_is_its_own_set_with_parity_and_reruns_skip(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    assert _run(breakhis, store).exit_code == 0
    first = _run(breakhis, store, "--precision", "int8")
    assert first.exit_code == 0, first.stderr
    assert "int8 model converted and cached" in first.stderr
    assert "tiny int8 vs fp32 on 16 held-out images: centred cosine mean" in first.stderr

    con = duckdb.connect(str(store), read_only=True)
    sets = con.execute("SELECT table_name, precision, model_path IS NOT NULL FROM embedding_sets ORDER BY table_name").fetchall()
    assert sets == [("emb_tiny__random_seed0", "fp32", False), ("emb_tiny__random_seed0_int8", "int8", True)]
    fp32_shas, fp32 = _vectors(con, "emb_tiny__random_seed0")
    int8_shas, int8 = _vectors(con, "emb_tiny__random_seed0_int8")
    assert fp32_shas == int8_shas and len(fp32_shas) == 32
    assert not np.array_equal(fp32, int8) and _cosine(fp32, int8).min() > 0.9  # quantised, but the same images
    rows = con.execute("SELECT precision, table_name, n_embedded, parity_centred_cosine_mean, parity_centred_cosine_min, "
                       "parity_rank_corr, parity_n_images FROM run_backbones JOIN runs USING (run_id) "
                       "ORDER BY started_at").fetchall()
    assert rows[0][:3] == ("fp32", "emb_tiny__random_seed0", 32) and rows[0][3:] == (None, None, None, None)
    precision, table, embedded, cos_mean, cos_min, rank, n = rows[1]
    assert (precision, table, embedded, n) == ("int8", "emb_tiny__random_seed0_int8", 32, 16)
    assert cos_mean >= 0.95 and cos_min >= 0.9 and rank > 0.5, rows[1]
    settings = con.execute("SELECT settings->>'precision' FROM runs ORDER BY started_at").fetchall()
    assert settings == [("fp32",), ("int8",)]
    con.close()

    again = run_tk_reporting_tensorflow("run", breakhis, "--backbone", "tiny", "--weights", "random", "--store", store,
                                        "--analysis", "none", "--export", "none", "--plugin", TINY, "--precision", "int8")
    assert again.exit_code == 0, again.stderr
    assert "nothing to extract" in again.stderr
    assert again.stderr.strip().endswith("TENSORFLOW_NOT_IMPORTED")
    con = duckdb.connect(str(store), read_only=True)
    last = con.execute("SELECT n_embedded, n_reused, precision, parity_centred_cosine_mean FROM run_backbones r "
                       "JOIN runs USING (run_id) ORDER BY started_at DESC LIMIT 1").fetchall()[0]
    assert last == (0, 32, "int8", cos_mean)  # the set's parity is shown again, not lost
    assert con.execute("SELECT count(*) FROM emb_tiny__random_seed0_int8").fetchall() == [(32,)]
    con.close()

    # a fresh store with the same images and weights finds the converted model in the cache
    other = tmp_path / "other.duckdb"
    fresh = _run(breakhis, other, "--precision", "int8")
    assert fresh.exit_code == 0 and "int8 model from the cache" in fresh.stderr, fresh.stderr
    # a new image joins the int8 set through the model that made it (not a new calibration)
    tile(np.random.default_rng(5), False).save(image_path(breakhis, "A", "14-100", 40, 9))
    added = _run(breakhis, store, "--precision", "int8")
    assert added.exit_code == 0 and "int8 model from the cache" in added.stderr, added.stderr
    model_of = "SELECT model_path FROM embedding_sets WHERE precision = 'int8'"
    with duckdb.connect(str(store), read_only=True) as con, duckdb.connect(str(other), read_only=True) as con_other:
        assert con.execute(model_of).fetchall() == con_other.execute(model_of).fetchall()
        assert con.execute("SELECT count(*) FROM emb_tiny__random_seed0_int8").fetchall() == [(33,)]


@pytest.mark.slow
@pytest.mark.parametrize("precision,closeness", [("bf16", 0.99), ("fp16", 0.999)])
def test_mixed_precisions_are_close_to_fp32(tmp_path, breakhis, precision, closeness):
    """bf16 keeps 8 mantissa bits, fp16 11: both stay close to fp32, fp16 closer."""
    import tensorflow as tf

    store = tmp_path / "tk.duckdb"
    assert _run(breakhis, store).exit_code == 0
    result = _run(breakhis, store, "--precision", precision)
    assert result.exit_code == 0, result.stderr
    table = f"emb_tiny__random_seed0_{precision}"
    con = duckdb.connect(str(store), read_only=True)
    _, fp32 = _vectors(con, "emb_tiny__random_seed0")
    shas, lowered = _vectors(con, table)
    assert len(shas) == 32 and _cosine(fp32, lowered).min() >= closeness
    assert np.abs(fp32 - lowered).max() > 0, "a lowered set must not be a copy of the fp32 one"
    cos_mean, stored = con.execute("SELECT parity_centred_cosine_mean, precision FROM run_backbones "
                                   f"WHERE table_name = '{table}'").fetchall()[0]
    assert stored == precision and cos_mean >= closeness
    warned = "--precision fp16: TensorFlow sees no GPU here" in " ".join(result.stderr.split())
    assert warned == (precision == "fp16" and not tf.config.list_physical_devices("GPU"))


def test_unknown_precision_is_one_clear_line(tmp_path, breakhis):
    result = _run(breakhis, tmp_path / "s.duckdb", "--precision", "int4")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: --precision int4: unknown precision; use one of fp32, bf16, fp16, int8"]
    assert not (tmp_path / "s.duckdb").exists()


def test_fp32_fast_path_equals_a_plain_model_call():
    """The fixed-batch graph function (padding included) gives what ``model(x)`` gives."""
    import tensorflow as tf

    from toolkit.extract.pipeline import embed_padded, make_extractor
    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    backbone = load_registry([str(TINY)]).backbone("tiny")
    model, _ = build_model(backbone, "random", 0)
    pixels = np.random.default_rng(0).integers(0, 256, (5, *backbone.input_size, 3), dtype=np.uint8)
    plain = model(backbone.preprocess(tf.constant(pixels, tf.float32)), training=False).numpy()
    fast = embed_padded(make_extractor(backbone, model, 4), pixels, 4)
    assert fast.dtype == np.float32 and fast.shape == plain.shape
    assert _cosine(plain.astype(np.float64), fast.astype(np.float64)).min() >= 0.99999


def test_stores_from_before_precision_keep_their_sets(tmp_path):
    """m005 rebuilds ``embedding_sets``: an existing fp32 set keeps its table and gains precision fp32."""
    from toolkit.store import MIGRATIONS, EmbeddingSet, Store

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for migration in MIGRATIONS[:4]:
        migration(con)
        con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [migration.__name__])
    con.execute("INSERT INTO embedding_sets (table_name, backbone, weights_id, weights_kind, dim) "
                "VALUES ('emb_tiny__random_seed0', 'tiny', 'random-seed0', 'random', 16)")
    con.execute("INSERT INTO run_backbones (run_id, backbone, table_name) VALUES ('r1', 'tiny', 'emb_tiny__random_seed0')")
    con.close()
    with Store.open(path) as store:
        assert store.query_df("SELECT table_name, precision FROM embedding_sets").values.tolist() == [
            ["emb_tiny__random_seed0", "fp32"]]
        assert store.one("SELECT precision FROM run_backbones") == ("fp32",)
        assert EmbeddingSet("tiny", "random-seed0", 16).table == "emb_tiny__random_seed0"
        assert store.embeddings.ensure_set(EmbeddingSet("tiny", "random-seed0", 16), "random", None, None) == []
        assert store.embeddings.ensure_set(EmbeddingSet("tiny", "random-seed0", 16, "int8"), "random", None, None) == ["random-seed0"]


def test_parity_far_from_fp32_gives_a_run_warning_and_close_parity_none():
    from toolkit.extract.precision import parity_warning

    far = parity_warning("resnet50", "int8", {"centred_cosine_mean": 0.80, "n_images": 16})
    assert far is not None and "resnet50 int8" in far and "0.800" in far and "--precision fp32" in far
    assert parity_warning("resnet50", "int8", {"centred_cosine_mean": 0.99, "n_images": 16}) is None
