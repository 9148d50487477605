"""Stain normalisation: the built-in Macenko and Reinhard methods, the step that applies them before
embedding, the embedding sets it keeps apart, the query path, the report's strip, and plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import STAND_IN, TINY, tk
from tests.datasets import make_breakhis
from toolkit.errors import TkError
from toolkit.extract import stain as stain_normalisation
from toolkit.plugin.registry import load_registry
from toolkit.plugins.stain import he_reference, macenko, reinhard
from toolkit.run.job import execute_run
from toolkit.run.settings import RunSettings
from toolkit.store import EmbeddingSet, Store

OTHER_STAINS = np.array([[0.65, 0.27], [0.70, 0.89], [0.29, 0.41]]) / np.linalg.norm(
    [[0.65, 0.27], [0.70, 0.89], [0.29, 0.41]], axis=0)
OTHER_MAX_C = np.array([1.5, 0.8])
WHITE = np.full((48, 64, 3), 255, np.uint8)


def he_tile(seed: int, matrix: np.ndarray = OTHER_STAINS, max_c: np.ndarray = OTHER_MAX_C,
            size: tuple[int, int] = (96, 128)) -> np.ndarray:
    return he_reference.synthetic_tile(matrix, max_c, size, seed)


def test_macenko_recovers_the_stain_matrix_h_then_e():
    od = macenko.optical_density(he_tile(1, size=(256, 256))[None])
    matrix, usable = macenko.stain_matrices(od)
    assert usable.tolist() == [True]
    np.testing.assert_allclose(matrix[0], OTHER_STAINS, atol=0.01)  # column 0 is H, column 1 is E


def test_macenko_fit_gives_the_matrix_and_the_99th_percentile_concentrations():
    tile = he_tile(2, size=(256, 256))
    state = macenko.fit(tile)
    np.testing.assert_allclose(state["stain_matrix"], OTHER_STAINS, atol=0.01)
    od = macenko.optical_density(tile[None])[0]
    true_concentrations = np.linalg.lstsq(OTHER_STAINS, od.T, rcond=None)[0]
    np.testing.assert_allclose(state["max_concentrations"], np.percentile(true_concentrations, 99, axis=1), rtol=0.03)


def test_macenko_on_a_tile_with_the_reference_stains_is_nearly_identity():
    tile = he_tile(3, he_reference.HE_REF, he_reference.MAX_C_REF)
    out = macenko.apply(tile[None], macenko.MACENKO.default_state)[0]
    assert np.abs(out - tile).mean() < 2.0  # grey levels
    other = he_tile(3)
    assert np.abs(macenko.apply(other[None], macenko.MACENKO.default_state)[0] - other).mean() > 10


def test_macenko_maps_other_stains_onto_the_reference():
    """The same tissue stained two ways comes out of Macenko close to the reference-stained one."""
    source, target = he_tile(4), he_tile(4, he_reference.HE_REF, he_reference.MAX_C_REF)
    out = macenko.apply(source[None], macenko.MACENKO.default_state)[0]
    assert np.abs(out - target).mean() < 0.25 * np.abs(source.astype(float) - target).mean()


def test_reinhard_output_has_the_target_lab_mean_and_std():
    target = reinhard.fit(he_tile(5, he_reference.HE_REF, he_reference.MAX_C_REF))
    out = reinhard.apply(he_tile(6)[None], target)
    mean, std = reinhard.lab_statistics(out)
    np.testing.assert_allclose(mean[0], target["mean"], atol=0.5)
    np.testing.assert_allclose(std[0], target["std"], rtol=0.03, atol=0.3)


def test_lab_conversion_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (1000, 3)).astype(float)
    np.testing.assert_allclose(reinhard.lab_to_rgb(reinhard.rgb_to_lab(rgb)), rgb, atol=0.05)  # float32, tabulated gamma
    np.testing.assert_allclose(reinhard.rgb_to_lab(np.array([255.0, 255, 255])), [100, 0, 0], atol=0.01)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("tile", ["white", "single_stain"])
def test_blank_and_single_stain_tiles_are_left_unchanged_and_counted(method, tile):
    pixels = WHITE if tile == "white" else he_tile(7, he_reference.HE_REF * [1, 0], he_reference.MAX_C_REF)
    if method == "reinhard" and tile == "single_stain":
        pytest.skip("Reinhard matches colour statistics; a single-stain tile is a valid input for it")
    normaliser = load_registry().stain_normaliser(method)
    out = np.asarray(normaliser.apply(pixels[None], normaliser.default_state))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], pixels)
    step = stain_normalisation.prepare(method, None, load_registry())
    step.normalise(pixels)
    step.normalise(he_tile(8))
    assert (step.n_normalised, step.n_unchanged) == (2, 1)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_batch_gives_what_each_image_gives_alone(method):
    normaliser = load_registry().stain_normaliser(method)
    batch = np.stack([he_tile(9), he_tile(10, he_reference.HE_REF, he_reference.MAX_C_REF),
                      np.full((96, 128, 3), 255, np.uint8), he_tile(11)])
    together = np.asarray(normaliser.apply(batch, normaliser.default_state))
    alone = np.concatenate([np.asarray(normaliser.apply(image[None], normaliser.default_state)) for image in batch])
    np.testing.assert_allclose(together, alone, atol=1e-3)


def test_the_stain_id_follows_the_method_and_the_reference(tmp_path):
    registry = load_registry()
    reference = tmp_path / "reference.png"
    Image.fromarray(he_tile(12, size=(128, 128))).save(reference)
    ids = {stain_normalisation.prepare("macenko", None, registry).stain_id,
           stain_normalisation.prepare("macenko", reference, registry).stain_id,
           stain_normalisation.prepare("reinhard", None, registry).stain_id,
           stain_normalisation.prepare("reinhard", reference, registry).stain_id}
    assert len(ids) == 4
    assert stain_normalisation.prepare("macenko", None, registry).stain_id in ids  # stable
    assert all(re.fullmatch(r"(macenko|reinhard)-[0-9a-f]{8}", i) for i in ids)
    assert stain_normalisation.prepare("none", None, registry) is None


def test_bad_stain_options_are_one_line_errors(tmp_path):
    registry = load_registry()
    with pytest.raises(TkError, match="no such stain normaliser; available: none, macenko, reinhard"):
        stain_normalisation.prepare("vahadane", None, registry)
    with pytest.raises(TkError, match="--stain-reference needs a method"):
        RunSettings(stain="none", stain_reference=tmp_path / "x.png")
    white = tmp_path / "white.png"
    Image.fromarray(WHITE).save(white)
    with pytest.raises(TkError, match="too little tissue or a single stain"):
        stain_normalisation.prepare("macenko", white, registry)
    with pytest.raises(TkError, match=r"white.png: fragile could not fit it \(ValueError: bad\)"):
        stain_normalisation.prepare("fragile", white, load_registry([_raising_fit(tmp_path)]))


def _raising_fit(tmp_path: Path) -> Path:
    """A plugin whose normaliser's fit raises."""
    plugin = tmp_path / "raising_fit.py"
    plugin.write_text(THIRD_PARTY.replace('return {"level": float(np.asarray(reference).mean())}',
                                          'raise ValueError("bad")').replace('"level"', '"fragile"'))
    return plugin


def test_embedding_sets_without_stain_keep_their_names():
    assert EmbeddingSet("tiny", "random-seed0", 16).table == "emb_tiny__random_seed0"
    assert EmbeddingSet("tiny", "random-seed0", 16, "int8", "macenko-1a2b3c4d").table == \
        "emb_tiny__random_seed0_int8_stain_macenko_1a2b3c4d"


def he_breakhis(root: Path) -> Path:
    """A BreakHis-layout tree whose images are H&E-like tiles stained in varied ways."""
    paths = make_breakhis(root)
    rng = np.random.default_rng(0)
    for k, path in enumerate(paths):
        matrix = he_reference.HE_REF + rng.normal(0, 0.08, (3, 2))
        matrix = np.abs(matrix) / np.linalg.norm(matrix, axis=0)
        Image.fromarray(he_reference.synthetic_tile(matrix, he_reference.MAX_C_REF * rng.uniform(0.7, 1.3, 2), (48, 64),
                                               k)).save(path)
    return root


def run(tmp_path: Path, data: Path, out: str, backbone: str = "stand_in", plugin: Path = STAND_IN, **settings) -> str:
    summary = execute_run(RunSettings(data=data, backbones=[backbone], weights="random", store=tmp_path / "tk.duckdb",
                                      out=tmp_path / out, plugins=[str(plugin), *settings.pop("plugins", [])],
                                      analyses=[], **settings))
    assert summary.status == "ok", summary.failures
    return summary.run_id


def sets(tmp_path: Path) -> dict[str, str]:
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        return dict(store.con.execute("SELECT table_name, stain FROM embedding_sets").fetchall())


def test_stained_runs_make_their_own_sets_and_the_report_shows_the_strip(tmp_path):
    data = he_breakhis(tmp_path / "data")
    reference = tmp_path / "reference.png"
    Image.fromarray(he_tile(13, size=(128, 128))).save(reference)
    run(tmp_path, data, "plain")
    stained = run(tmp_path, data, "macenko", stain="macenko")
    run(tmp_path, data, "referenced", stain="macenko", stain_reference=reference)
    run(tmp_path, data, "reinhard", stain="reinhard")
    found = sets(tmp_path)
    assert len(found) == 4 and list(found.values()).count("none") == 1
    assert {v.split("-")[0] for v in found.values()} == {"none", "macenko", "reinhard"}
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        vectors = {stain: store.con.execute(f"SELECT list_sort(list(vector[1])) FROM {table}").fetchone()[0]
                   for table, stain in found.items()}
        assert len({tuple(v) for v in vectors.values()}) == 4  # normalised pixels, other embeddings
        rows = store.con.execute("SELECT stain, n_embedded FROM run_backbones WHERE run_id = ?", [stained]).fetchall()
        settings = store.runs.run(stained)["settings"]
    assert rows[0][0].startswith("macenko-") and rows[0][1] == 32
    settings = settings if isinstance(settings, dict) else json.loads(settings)
    assert (settings["stain"], settings["stain_id"]) == ("macenko", rows[0][0])

    html = next((tmp_path / "macenko").glob("*.html")).read_text()
    section = html[html.index('<div id="stain-normalisation">'):]
    section = section[:section.index("</div>\n")]
    assert "normalised 32 images" in section and "were left unchanged" in section
    assert section.count('src="data:image/png;base64,') == 12  # 6 images, before and after
    assert "14-1" not in section  # no path, so no patient id
    assert 'id="stain-normalisation"' not in next((tmp_path / "plain").glob("*.html")).read_text()

    again = run(tmp_path, data, "again", stain="macenko")
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        assert store.con.execute("SELECT n_embedded, n_reused FROM run_backbones WHERE run_id = ?",
                                 [again]).fetchone() == (0, 32)
    assert len(sets(tmp_path)) == 4


def test_similar_normalises_a_new_query_like_the_set(tmp_path):
    data = he_breakhis(tmp_path / "data")
    run(tmp_path, data, "macenko", stain="macenko")
    original = sorted(data.rglob("*.png"))[5]
    query = tmp_path / "query.png"
    Image.open(original).save(query, compress_level=0)  # the same pixels, other bytes: embedded anew
    result = tk("similar", query, "--backbone", "stand_in", "--store", tmp_path / "tk.duckdb", "--plugin", STAND_IN,
                "-k", "1", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    line = result.stdout.splitlines()[1]
    assert original.name in line
    assert float(line.rsplit(",", 1)[1]) > 0.99999


THIRD_PARTY = '''
import numpy as np
from toolkit import StainNormaliser, hookimpl

def fit(reference):
    return {"level": float(np.asarray(reference).mean())}

def apply(batch, state):
    batch = np.asarray(batch, dtype=np.float32)
    return batch - batch.mean(axis=(1, 2, 3), keepdims=True) + state["level"]

@hookimpl
def register_stain_normalisers(register):
    register(StainNormaliser(name="level", fit=fit, apply=apply, default_state={"level": 128.0}))
'''


def test_a_third_party_stain_plugin_is_used(tmp_path):
    plugin = tmp_path / "level_plugin.py"
    plugin.write_text(THIRD_PARTY)
    data = he_breakhis(tmp_path / "data")
    listed = tk("plugins", "--json", "--plugin", plugin)
    assert '"name": "level",\n    "kind": "stain"' in listed.stdout
    run_id = run(tmp_path, data, "level", stain="level", plugins=[str(plugin)])
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        [(table, stain)] = store.con.execute("SELECT table_name, stain FROM embedding_sets").fetchall()
        assert stain.startswith("level-") and table.endswith(stain.replace("-", "_"))
        row = store.tables.rows(stain_normalisation.RUNS, {"run_id": run_id}).iloc[0]
    assert (row["n_normalised"], row["n_unchanged"]) == (32, 0)
    step = stain_normalisation.for_set(Store.open(tmp_path / "tk.duckdb", read_only=True),
                                       load_registry([plugin]), stain)
    assert step.state == {"level": 128.0}


def test_a_failing_normaliser_skips_the_image_and_stores_nothing_raw(tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(THIRD_PARTY.replace('"level"', '"broken"').replace(
        "batch = np.asarray(batch, dtype=np.float32)", "raise ValueError('no stains here')"))
    data = he_breakhis(tmp_path / "data")
    summary = execute_run(RunSettings(data=data, backbones=["stand_in"], weights="random", store=tmp_path / "tk.duckdb",
                                      out=tmp_path / "out", plugins=[str(STAND_IN), str(plugin)], analyses=[],
                                      stain="broken", exports=[]))
    assert summary.n_skipped == 32
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        [table] = [r[0] for r in store.con.execute("SELECT table_name FROM embedding_sets").fetchall()]
        assert store.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        reasons = store.con.execute("SELECT DISTINCT reason FROM skipped_files").fetchall()
    assert reasons == [("stain normaliser broken failed: ValueError: no stains here",)]


def test_a_second_macenko_is_refused(tmp_path):
    from toolkit.errors import PluginError

    plugin = tmp_path / "clash_stain.py"
    plugin.write_text(THIRD_PARTY.replace('"level"', '"macenko"'))
    with pytest.raises(PluginError, match=r"'macenko' is registered twice: by macenko and by .*clash_stain.py"):
        load_registry([plugin])


def test_the_classifier_of_a_stained_run_reads_images_as_the_run_did(tmp_path):
    """tk explain, the Grad-CAM analysis and exported models see the pixels the embeddings were made of."""
    from toolkit.ingest.images import read_image
    from toolkit.models.classifier import load_classifier

    data = he_breakhis(tmp_path / "data")
    run_id = run(tmp_path, data, "macenko", "tiny", TINY, stain="macenko")
    registry = load_registry([str(TINY)])
    with Store.open(tmp_path / "tk.duckdb", read_only=True) as store:
        classifier = load_classifier(store, registry, "tiny", run_id)
    assert classifier.stain.stain_id == stain_normalisation.prepare("macenko", None, registry).stain_id
    image = sorted(data.rglob("*.png"))[3]
    step = stain_normalisation.prepare("macenko", None, registry)
    expected = stain_normalisation.decode(image.read_bytes(), [((32, 32), "stretch")], step)[0]
    np.testing.assert_array_equal(classifier.read(image), expected)
    assert np.abs(classifier.read(image).astype(int) - read_image(image, (32, 32))).mean() > 1
    described = classifier.metadata()["stain"]
    restored = stain_normalisation.restore(described, registry)
    assert (restored.stain_id, restored.state) == (classifier.stain.stain_id, classifier.stain.state)


def test_m010_keeps_old_sets_and_lets_a_stained_set_join_them(tmp_path):
    """A store made before stain normalisation: its sets keep their names and rows, read as stain none,
    and a stained set of the same backbone, weights and precision can be added beside them."""
    import duckdb

    from toolkit.store.migrations import MIGRATIONS, utcnow

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for migration in MIGRATIONS[:MIGRATIONS.index(next(m for m in MIGRATIONS if m.__name__ == "m010_stain"))]:
        migration(con)
        con.execute("INSERT INTO _migrations VALUES (?, ?)", [migration.__name__, utcnow()])
    con.execute("INSERT INTO embedding_sets (table_name, backbone, weights_id, dim) "
                "VALUES ('emb_tiny__random_seed0', 'tiny', 'random-seed0', 16)")
    con.close()
    with Store.open(path) as store:
        assert store.con.execute("SELECT table_name, stain, precision FROM embedding_sets").fetchall() == [
            ("emb_tiny__random_seed0", "none", "fp32")]
        stained = EmbeddingSet("tiny", "random-seed0", 16, stain="macenko-1a2b3c4d")
        assert store.embeddings.ensure_set(stained, "random", None, None) == ["random-seed0"]
        assert store.con.execute("SELECT count(*), count(created_at) FROM embedding_sets").fetchone() == (2, 2)
