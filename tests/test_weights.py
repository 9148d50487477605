"""Weights: seeded random init, local files keyed by sha256, imagenet strict and auto fallback."""

from __future__ import annotations

import json
import textwrap

import duckdb
import numpy as np
import pytest

from tests.conftest import TINY, tk
from toolkit.plugin.types import Backbone
from toolkit.plugin.registry import load_registry
from toolkit.ingest.scan import sha256_file
from toolkit.extract.weights import WeightsUnavailable, build_model

OFFLINE_PLUGIN = textwrap.dedent('''
    from toolkit import hookimpl
    from toolkit.plugin.types import Backbone

    def build(weights):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://example.invalid/w.h5: None -- [Errno -2] Name or service not known")
        import keras
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3)(inputs)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))

    @hookimpl
    def register_backbones(register):
        register(Backbone(name="offline", dim=4, build=build, preprocess=lambda x: x / 255.0, input_size=(32, 32)))
''')


def _tiny() -> Backbone:
    return load_registry([TINY]).backbone("tiny")


def test_random_weights_are_seeded():
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    first, resolved = build_model(_tiny(), "random", 3)
    second, _ = build_model(_tiny(), "random", 3)
    other, _ = build_model(_tiny(), "random", 4)
    assert resolved.weights_id == "random-seed3"
    np.testing.assert_array_equal(first(x).numpy(), second(x).numpy())
    assert not np.allclose(first(x).numpy(), other(x).numpy())


def test_local_weights_file_is_recorded_and_never_mixed(tmp_path, breakhis):
    model_a, _ = build_model(_tiny(), "random", 1)
    model_b, _ = build_model(_tiny(), "random", 2)
    file_a, file_b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    model_a.save_weights(file_a)
    model_b.save_weights(file_b)
    store = tmp_path / "tk.duckdb"
    for weights in (file_a, file_b):
        result = tk("run", breakhis, "--backbone", "tiny", "--weights", weights, "--store", store,
                    "--analysis", "none", "--export", "none", "--plugin", TINY)
        assert result.exit_code == 0, result.stderr
    assert "start a new embedding set" in result.stderr, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    sets = con.execute("SELECT weights_id, weights_kind, weights_sha256 FROM embedding_sets ORDER BY created_at").fetchall()
    sha_a, sha_b = sha256_file(file_a), sha256_file(file_b)
    assert sets == [(f"file-{sha_a[:16]}", "file", sha_a), (f"file-{sha_b[:16]}", "file", sha_b)]
    assert con.execute(f"SELECT count(*) FROM emb_tiny__file_{sha_a[:16]}").fetchall() == [(32,)]
    assert con.execute(f"SELECT count(*) FROM emb_tiny__file_{sha_b[:16]}").fetchall() == [(32,)]
    # the view follows the weights used last
    assert con.execute("SELECT count(*) FROM embeddings_tiny e JOIN emb_tiny__file_" + sha_b[:16] +
                       " f USING (sha256) WHERE e.vector = f.vector").fetchall() == [(32,)]


def test_imagenet_strict_fails_with_one_line(tmp_path, breakhis):
    plugin = tmp_path / "offline.py"
    plugin.write_text(OFFLINE_PLUGIN)
    with pytest.raises(WeightsUnavailable, match="download failed"):
        build_model(load_registry([plugin]).backbone("offline"), "imagenet")
    result = tk("run", breakhis, "--backbone", "offline", "--weights", "imagenet",
                "--store", tmp_path / "s.duckdb", "--plugin", plugin)
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]  # the fix from the README, not only the raw exception (#17, 11)
    assert line.startswith("error: ImageNet weights for offline could not be downloaded (offline?); put the "
                           "official offline *_notop.h5 file in ~/.keras/models/"), line
    assert "or pass --weights PATH" in line and "(download failed: Exception: URL fetch failure" in line
    assert "Name or service not known" in line or line.endswith("…)")  # never cut mid-word


def test_auto_falls_back_to_random_loudly_and_records_it(tmp_path, breakhis):
    plugin = tmp_path / "offline.py"
    plugin.write_text(OFFLINE_PLUGIN)
    store = tmp_path / "s.duckdb"
    result = tk("run", breakhis, "--backbone", "offline", "--store", store, "--out", tmp_path / "out",
                "--plugin", plugin)
    assert result.exit_code == 0, result.stderr
    assert "using RANDOM weights (seed 0)" in result.stderr
    con = duckdb.connect(str(store), read_only=True)
    warnings, = con.execute("SELECT warnings FROM runs").fetchall()[0]
    assert "RANDOM weights" in json.loads(warnings)[0]
    assert con.execute("SELECT weights_kind, weights_id FROM run_backbones").fetchall() == [("random", "random-seed0")]
    report = next((tmp_path / "out").glob("*.html")).read_text()
    assert 'id="random-weights"' in report
    assert report.count("are unavailable (download failed") == 1  # shown with its backbone, not again (#17, 11)
    assert "~/.keras/models/" in report  # and the note says how to get the real weights


def test_wrong_output_shape_is_a_clear_error():
    registry = load_registry([TINY])
    liar = Backbone(name="liar", dim=99, build=registry.backbone("tiny").build, preprocess=lambda x: x,
                    input_size=(32, 32))
    with pytest.raises(Exception, match="declares dim 99 but its model outputs shape"):
        build_model(liar, "random")
