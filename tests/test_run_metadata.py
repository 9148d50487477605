"""Each run keeps its own view of its images (issue #20, item 5): a later run that reads the same
files with other labels (another manifest) leaves an earlier run's metadata and report as they were."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.conftest import STAND_IN, TINY, tk
from tests.datasets import tile
from toolkit.errors import TkError
from toolkit.store import MIGRATIONS, Store
from toolkit.store.migrations import RUN_IMAGE_COLUMNS
from toolkit.store.embeddings import EmbeddingSet


def _manifest(path, labels, patients):
    rows = ["path,label,subtype,patient_id"] + [f"images/img{i}.png,{label},{label}-sub,{patient}"
                                                 for i, (label, patient) in enumerate(zip(labels, patients))]
    path.write_text("\n".join(rows) + "\n")
    return path


def _runs(store):
    with duckdb.connect(str(store), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]


def test_a_later_run_with_other_labels_leaves_an_earlier_runs_metadata_and_report(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        tile(rng, i % 2 == 0).save(images / f"img{i}.png")
    first = _manifest(tmp_path / "first.csv", ["benign", "malignant"] * 4, [f"p{i % 4}" for i in range(8)])
    second = _manifest(tmp_path / "second.csv", ["cat", "dog", "emu", "fox"] * 2, [f"q{i % 2}" for i in range(8)])
    store = tmp_path / "tk.duckdb"
    for manifest in (first, second):
        result = tk("run", manifest, "--backbone", "tiny", "--analysis", "none", "--export", "none",
                    "--store", store, "--plugin", TINY)
        assert result.exit_code == 0, result.stderr
    run_a, run_b = _runs(store)
    with Store.open(store, read_only=True) as opened:
        mine = opened.images.run_images(run_a)
        assert sorted(mine["label"]) == ["benign"] * 4 + ["malignant"] * 4
        assert sorted(mine["patient_id"].unique()) == ["p0", "p1", "p2", "p3"]
        assert sorted(opened.images.run_images(run_b)["label"].unique()) == ["cat", "dog", "emu", "fox"]
        metadata, vectors = opened.embeddings.run_embeddings(run_a, EmbeddingSet("tiny", "random-seed0", 16, "fp32"))
        assert list(metadata["label"]) == ["benign", "malignant"] * 4 and vectors.shape == (8, 16)
        assert set(metadata["subtype"]) == {"benign-sub", "malignant-sub"}
        latest = opened.con.execute("SELECT DISTINCT label FROM images ORDER BY label").fetchall()
        assert latest == [("cat",), ("dog",), ("emu",), ("fox",)]  # images: as the latest run read them
    report = tk("report", run_a, "--store", store, "--out", tmp_path / "a", "--reveal-ids", "--plugin", TINY)
    assert report.exit_code == 0, report.stderr
    html = next((tmp_path / "a").glob("tk-report-*.html")).read_text()
    assert "malignant" in html and "benign-sub" in html
    assert not [word for word in ("cat", "dog", "emu", "fox", "q0", "q1") if f">{word}<" in html]


def test_the_migration_gives_each_stored_run_the_view_images_holds(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for migration in MIGRATIONS[:7]:  # a store written before m008_run_image_metadata
        migration(con)
        con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [migration.__name__])
    con.execute("""INSERT INTO images (path, relpath, sha256, source, label, subtype, magnification, patient_id,
                                      width, height) VALUES
                   ('/d/a.png', 'a.png', 'aa', 'manifest', 'benign', 'A', 40, '7', 64, 48),
                   ('/d/b.png', 'b.png', 'bb', 'manifest', 'malignant', NULL, NULL, NULL, 32, 32)""")
    con.execute("INSERT INTO run_images VALUES ('r1', 1), ('r1', 2), ('r2', 2)")
    con.close()
    with Store.open(path) as store:
        rows = store.con.execute("""SELECT run_id, image_id, relpath, sha256, source, label, subtype, magnification,
                                           patient_id, width, height FROM run_images ORDER BY ALL""").fetchall()
        assert rows == [("r1", 1, "a.png", "aa", "manifest", "benign", "A", 40, "7", 64, 48),
                        ("r1", 2, "b.png", "bb", "manifest", "malignant", None, None, None, 32, 32),
                        ("r2", 2, "b.png", "bb", "manifest", "malignant", None, None, None, 32, 32)]
        assert list(store.images.run_images("r1")["label"]) == ["benign", "malignant"]


def _as_before(store, *migrations):
    """Turn ``store`` back into one written before ``migrations`` (their tables, columns and records gone)."""
    with duckdb.connect(str(store)) as con:
        if "m012_result_table_names" in migrations:
            con.execute("DROP TABLE result_table_names")
        if "m011_shards" in migrations:
            con.execute("DROP TABLE ingested_shards")
        if "m010_stain" in migrations:
            con.execute("ALTER TABLE run_backbones DROP COLUMN stain")
            con.execute("ALTER TABLE embedding_sets DROP COLUMN stain")
        if "m009_clinical" in migrations:
            con.execute("DROP VIEW clinical")
            for table in ("clinical_columns", "clinical_values", "clinical_patient_values"):
                con.execute(f"DROP TABLE {table}")
        if "m008_run_image_metadata" in migrations:
            for column in RUN_IMAGE_COLUMNS:
                con.execute(f"ALTER TABLE run_images DROP COLUMN {column}")
        if "m007_store_secrets" in migrations:
            con.execute("DROP TABLE store_secrets")
        con.execute("DELETE FROM _migrations WHERE name IN (SELECT unnest(?))", [list(migrations)])


def test_tk_report_reads_an_old_store_without_writing_it(tmp_path):
    """A store from before m007 (and m008) opened read-only by ``tk report``: the report failed
    ("predates report pseudonyms"); now it is rendered with a one-off secret, and says so."""
    import hashlib
    import re

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        tile(rng, i % 2 == 0).save(images / f"img{i}.png")
    (images / "img6.png").write_bytes((images / "img0.png").read_bytes())  # a conflict: patient ids in a table
    manifest = _manifest(tmp_path / "m.csv", ["benign", "malignant"] * 3 + ["benign"],
                         ["O'Brien", "Smith-7", "Jones-9"] * 2 + ["Jones-9"])
    store = tmp_path / "tk.duckdb"
    result = tk("run", manifest, "--backbone", "stand_in", "--analysis", "integrity", "--export", "none",
                "--store", store, "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    _as_before(store, "m007_store_secrets", "m008_run_image_metadata", "m009_clinical", "m010_stain",
               "m011_shards", "m012_result_table_names")
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    pages = []
    for out in ("a", "b"):
        report = tk("report", "--store", store, "--out", tmp_path / out, "--plugin", STAND_IN)
        assert report.exit_code == 0, report.stderr
        pages.append(next((tmp_path / out).glob("tk-report-*.html")).read_text())
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before  # read, never written
    for page in pages:
        assert "Smith-7" not in page and "Jones-9" not in page and "malignant" in page
        assert "keyed by a secret made for this report only" in page
    assert re.findall(r"P-[0-9a-f]{10}", pages[0]) and set(re.findall(r"P-[0-9a-f]{10}", pages[0])).isdisjoint(re.findall(r"P-[0-9a-f]{10}", pages[1]))
    with duckdb.connect(str(store), read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()][-1] == "m006_run_error"
    with Store.open(store) as upgraded:  # a writing open upgrades it: one secret from now on
        assert upgraded.stand_ins == [] and len(upgraded.runs.report_secret()) == 32
        assert sorted(upgraded.images.run_images(upgraded.runs.run()["run_id"])["label"]) == ["benign"] * 4 + ["malignant"] * 3
    _as_before(store, "m006_run_error")
    with pytest.raises(TkError, match=r"predates schema m006_run_error and was opened read-only; open it once with a "
                                      r"writing tk command"):
        Store.open(store, read_only=True)
