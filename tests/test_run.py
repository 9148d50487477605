"""End to end: `tk run` on BreakHis-layout trees with the stand-in backbone (fast), as a user runs it."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
from PIL import Image

from tests.conftest import STAND_IN, TINY, run_tk, run_tk_reporting_tensorflow, tk
from tests.datasets import image_path, make_breakhis, make_class_folders, tile


def _messy_tree(root):
    """A BreakHis tree plus a truncated PNG, grayscale, RGBA, 16-bit, .DS_Store, a text file and a
    DC/LC duplicate with identical bytes (as patient 14-13412 in the real dataset)."""
    make_breakhis(root)
    rng = np.random.default_rng(1)
    gray = image_path(root, "A", "14-900", 40, 1)
    gray.parent.mkdir(parents=True)
    tile(rng, False).convert("L").save(gray)
    rgba = image_path(root, "A", "14-900", 40, 2)
    tile(rng, False).convert("RGBA").save(rgba)
    deep = image_path(root, "A", "14-900", 40, 3)
    Image.fromarray((np.asarray(tile(rng, False).convert("L"), np.uint16) * 257)).save(deep)
    truncated = image_path(root, "F", "14-901", 40, 1)
    truncated.parent.mkdir(parents=True)
    tile(rng, False).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (root / "benign" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "benign" / "notes.txt").write_text("scanner notes")
    dc = image_path(root, "DC", "14-13412", 100, 1)
    lc = image_path(root, "LC", "14-13412", 100, 1)
    for path in (dc, lc):
        path.parent.mkdir(parents=True)
    tile(rng, True).save(dc)
    shutil.copyfile(dc, lc)
    return truncated


def test_run_on_messy_breakhis_tree(tmp_path):
    root = tmp_path / "breast"
    truncated = _messy_tree(root)
    store = tmp_path / "tk.duckdb"
    result = tk("run", root, "--backbone", "stand_in", "--weights", "random", "--store", store,
                "--out", tmp_path / "reports", "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    assert truncated.name in result.stderr and "skipped" in result.stderr
    con = duckdb.connect(str(store), read_only=True)
    # 32 generated + gray + rgba + 16-bit + DC/LC pair = 37 readable images; the truncated file is not one
    assert con.execute("SELECT count(*) FROM images").fetchall()[0][0] == 37
    assert con.execute("SELECT count(*) FROM images WHERE path LIKE '%notes.txt' OR path LIKE '%DS_Store' "
                       "OR path LIKE ?", [f"%{truncated.name}"]).fetchall()[0][0] == 0
    row = con.execute("SELECT label, subtype, magnification, patient_id FROM images WHERE relpath LIKE ?",
                      ["%SOB_M_LC-14-13412-100-001.png"]).fetchall()
    assert row == [("malignant", "lobular_carcinoma", 100, "14-13412")]
    gray = con.execute("SELECT label, subtype, magnification, patient_id, width, height FROM images "
                       "WHERE relpath LIKE '%SOB_B_A-14-900-40-001.png'").fetchall()
    assert gray == [("benign", "adenosis", 40, "14-900", 64, 48)]
    # one vector per distinct content; the DC/LC pair shares one
    n_rows, n_distinct, dim = con.execute(
        "SELECT count(*), count(DISTINCT sha256), max(len(vector)) FROM embeddings_stand_in").fetchall()[0]
    assert (n_rows, n_distinct, dim) == (37, 36, 16)
    assert con.execute("SELECT typeof(vector) FROM embeddings_stand_in LIMIT 1").fetchall()[0][0] == "FLOAT[16]"
    [(table,)] = con.execute("SELECT table_name FROM embedding_sets").fetchall()
    assert con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 36
    skipped = con.execute("SELECT relpath FROM skipped_files").fetchall()
    assert [r[0].rsplit("/", 1)[-1] for r in skipped] == [truncated.name]
    assert con.execute("SELECT status FROM analysis_runs WHERE analysis = 'pca'").fetchall() == [("ok",)]
    assert list((tmp_path / "reports").glob("tk-report-*.html"))


def test_rerun_adds_nothing_and_builds_no_model(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    args = ("run", breakhis, "--backbone", "tiny", "--store", store, "--out", tmp_path / "r", "--plugin", TINY)
    first = tk(*args)
    assert first.exit_code == 0, first.stderr
    con = duckdb.connect(str(store), read_only=True)
    counts = con.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM emb_tiny__random_seed0)").fetchall()
    con.close()
    second = run_tk_reporting_tensorflow(*args)
    assert second.exit_code == 0, second.stderr
    assert "nothing to extract" in second.stderr
    assert second.stderr.strip().endswith("TENSORFLOW_NOT_IMPORTED")
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM emb_tiny__random_seed0)").fetchall() == counts
    assert con.execute("SELECT count(*) FROM run_images GROUP BY run_id").fetchall() == [(32,), (32,)]
    # unchanged code, data and settings: the analyses' stored results are reused, not recomputed
    assert "reused the results of run" in second.stderr
    keys = con.execute("SELECT run_id, count(DISTINCT cache_key) FROM analysis_runs GROUP BY run_id").fetchall()
    assert len(keys) == 2 and keys[0][1] == keys[1][1] > 5
    per_run = con.execute("SELECT count(*) FROM results_ttest GROUP BY run_id").fetchall()
    assert len(per_run) == 2 and per_run[0] == per_run[1]
    con.close()
    third = tk(*args, "--seed", "1")
    assert third.exit_code == 0 and "reused the results" not in third.stderr  # a new seed recomputes


def test_new_image_is_added_incrementally(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    args = ("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--store", store,
            "--export", "none", "--analysis", "none", "--plugin", STAND_IN)
    assert tk(*args).exit_code == 0
    extra = image_path(breakhis, "A", "14-100", 40, 9)
    tile(np.random.default_rng(5), False).save(extra)
    again = tk(*args)
    assert again.exit_code == 0
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT n_embedded, n_reused FROM run_backbones JOIN runs USING (run_id) "
                       "ORDER BY started_at").fetchall() == [(32, 0), (1, 32)]


def test_unknown_backbone_is_one_clear_line(tmp_path, breakhis):
    result = tk("run", breakhis, "--backbone", "nope", "--store", tmp_path / "s.duckdb")
    assert result.exit_code == 1
    expected = "error: unknown backbone 'nope'; available: densenet201, efficientnetb0, resnet50 (see `tk plugins`)"
    assert result.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "s.duckdb").exists()
    from toolkit.store import Store

    Store.open(tmp_path / "other.duckdb").close()  # an (empty) store, so that tk similar gets to the backbone
    image = next(breakhis.rglob("*.png"))
    similar = tk("similar", image, "--backbone", "nope", "--store", tmp_path / "other.duckdb")
    assert similar.stderr.strip().splitlines()[-1] == expected  # every command words it the same (#17, 14)


def test_missing_data_folder_is_one_clear_line(tmp_path):
    result = tk("run", tmp_path / "nowhere", "--backbone", "stand_in", "--plugin", STAND_IN, "--store", tmp_path / "s.duckdb")
    assert result.exit_code == 1
    assert "nowhere does not exist" in result.stderr and "Traceback" not in result.stderr


def test_patient_from_takes_patient_ids_from_the_paths_of_class_folders(tmp_path):
    data = make_class_folders(tmp_path / "slides")
    store = tmp_path / "tk.duckdb"
    result = tk("run", data, "--patient-from", r"patient_(\w+)", "--backbone", "stand_in", "--weights", "random",
                "--analysis", "none", "--export", "none", "--store", store, "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute("SELECT DISTINCT label, patient_id FROM images ORDER BY patient_id").fetchall()
    assert rows == [("benign", "b0"), ("benign", "b1"), ("benign", "b2"),
                    ("malignant", "m0"), ("malignant", "m1"), ("malignant", "m2")]


def test_patient_from_with_an_invalid_regex_is_one_line(tmp_path):
    data = make_class_folders(tmp_path / "slides")
    result = tk("run", data, "--patient-from", "patient_(", "--backbone", "stand_in", "--plugin", STAND_IN,
                "--store", tmp_path / "s.duckdb")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --patient-from 'patient_(' is not a valid regular expression")
    assert not (tmp_path / "s.duckdb").exists()


def test_reports_go_to_tk_reports_by_default_not_the_package_folder(tmp_path, breakhis):
    """Issue #17, item 13: the default output folder was reports/, also a source folder of tk."""
    result = tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--analysis", "none",
                "--plugin", STAND_IN, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert list((tmp_path / "tk-reports").glob("tk-report-*.html"))
    assert not (tmp_path / "reports").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, breakhis):
    """Issue #20, item 14: --out naming an existing file failed only after embedding and analysing."""
    taken = tmp_path / "report.html"
    taken.write_text("mine")
    store = tmp_path / "tk.duckdb"
    for out in (taken, taken / "sub"):
        result = tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--analysis", "none",
                    "--store", store, "--out", out, "--plugin", STAND_IN)
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            f"error: --out {out} {'is' if out == taken else f'is inside {taken}, which is'} a file, not a folder; "
            "give a folder (created if missing)"]
    assert not store.exists() and taken.read_text() == "mine"


def test_progress_fits_80_columns_and_covers_the_analyses(tmp_path, breakhis):
    """Issue #17, item 10: at 80 columns the progress line kept its count, rate and times, and the
    analysis phase (minutes on the demo) showed no progress at all."""
    # a fresh process: the console reads COLUMNS when the process starts
    result = run_tk("run", breakhis, "--backbone", "stand_in", "--weights", "random", "--analysis", "pca,ttest",
                    "--export", "none", "--store", tmp_path / "tk.duckdb", "--plugin", STAND_IN, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    embedding = next(line for line in lines if line.startswith("embedding ━") or line.startswith("embedding ╸"))
    analysing = next(line for line in lines if line.startswith("analysing"))
    assert "32/32" in embedding and "img/s" in embedding and embedding.count("0:00:") == 2, embedding
    assert "2/2" in analysing and "step/s" in analysing, analysing
    assert max(len(line) for line in (embedding, analysing)) <= 80


def test_an_analysis_skipped_for_the_same_reason_on_every_backbone_is_one_line(tmp_path, breakhis):
    """``clinical`` skips on every backbone of a run without clinical variables: one line naming the
    backbones, not one long line per backbone."""
    extra = TINY.parent / "extra_plugin.py"
    result = tk("run", breakhis, "--backbone", "stand_in,micro", "--weights", "random", "--analysis", "clinical",
                "--export", "none", "--store", tmp_path / "tk.duckdb", "--plugin", STAND_IN, "--plugin", extra)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("analysis clinical")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("analysis clinical on stand_in, micro skipped: the run has no clinical variables")
