"""The DuckDB store: crash safety, one writer at a time, read-only queries, migrations."""

from __future__ import annotations

import pytest

import os
import random
import signal
import subprocess
import sys
import time

import duckdb
from tests.conftest import PLUGINS, TINY, run_tk
from tests.datasets import make_breakhis
from toolkit.errors import TkError
from toolkit.store import MIGRATIONS, Store

SLOW = PLUGINS / "slow_backbone.py"


def _contents(store):
    con = duckdb.connect(str(store), read_only=True)
    try:
        images = con.execute("SELECT relpath, sha256, label, patient_id FROM images ORDER BY relpath").fetchall()
        has_set = con.execute("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_name = 'emb_slow__random_seed0'").fetchall()[0][0]
        vectors = con.execute("SELECT sha256, vector FROM emb_slow__random_seed0 ORDER BY sha256").fetchall() if has_set else []
        return images, vectors
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_during_extraction_then_rerun_equals_clean_run(tmp_path):
    data = tmp_path / "breast"
    make_breakhis(data, patients=2, magnifications=(40, 100, 200), per_magnification=2)  # 48 images
    args = ["run", data, "--backbone", "slow", "--weights", "random", "--batch-size", "4",
            "--analysis", "none", "--export", "none", "--plugin", SLOW]
    clean = tmp_path / "clean.duckdb"
    assert run_tk(*args, "--store", clean).exit_code == 0
    expected = _contents(clean)
    assert len(expected[0]) == 48 and len(expected[1]) == 48

    rng = random.Random(7)
    for attempt in range(3):
        store = tmp_path / f"killed{attempt}.duckdb"
        _kill_after(args, store, "embedding 48 images with slow", rng.uniform(0.2, 2.5))  # 12 batches take ~3 s
        assert len(_contents(store)[1]) < 48, "the kill came too late to test anything"
        resumed = run_tk(*args, "--store", store)
        assert resumed.exit_code == 0, resumed.stderr
        assert _contents(store) == expected
        con = duckdb.connect(str(store), read_only=True)
        statuses = [r[0] for r in con.execute("SELECT status FROM runs ORDER BY started_at").fetchall()]
        con.close()
        assert statuses == ["interrupted", "ok"]


def _kill_after(args, store, line, seconds):
    """Start `tk` on ``store``, wait until it prints ``line``, then SIGKILL it ``seconds`` later."""
    process = subprocess.Popen([sys.executable, "-m", "toolkit", *map(str, args), "--store", str(store)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_line(process, line, timeout=120)
    time.sleep(seconds)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_line(process, text, timeout):
    """Read the run's stderr until ``text`` appears (extraction has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"tk run never printed {text!r}")


def test_second_writer_gets_one_clear_line(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    holder = duckdb.connect(str(store))
    try:
        result = run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--plugin", TINY)
    finally:
        holder.close()
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"error: store {store} is in use by process {os.getpid()} (DuckDB allows one writer); "
                         "wait for it to finish or use another --store")


def test_sql_is_read_only_by_default(tmp_path, breakhis):
    store = tmp_path / "tk.duckdb"
    assert run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--export", "none",
                  "--analysis", "none", "--plugin", TINY).exit_code == 0
    counted = run_tk("sql", "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label",
                     "--store", store, "--format", "csv")
    assert counted.stdout.splitlines() == ["label,n", "benign,16", "malignant,16"]
    dropped = run_tk("sql", "DROP TABLE images", "--store", store)
    assert dropped.exit_code == 1 and "read-only" in dropped.stderr.lower()
    assert run_tk("sql", "SELECT count(*) AS n FROM images", "--store", store, "--format", "csv").stdout.splitlines() == ["n", "32"]


def test_migrations_apply_once(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store.open(path):
        pass
    with Store.open(path) as store:
        names = [r[0] for r in store.con.execute("SELECT name FROM _migrations").fetchall()]
    assert names == [m.__name__ for m in MIGRATIONS]


def test_the_default_run_is_the_latest_finished_one_and_a_failed_run_keeps_its_error(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.start_run("a", "tk run", {}, {})
        store.update_run("a", status="ok")
        store.start_run("b", "tk run", {}, {})
        store.update_run("b", status="failed", error="resnet50 has no ImageNet weights")
        assert store.run()["run_id"] == "a"
        assert store.run("b")["error"] == "resnet50 has no ImageNet weights"


def test_a_store_with_only_a_failed_run_says_why(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.start_run("b", "tk run", {}, {})
        store.update_run("b", status="failed", error="resnet50 has no ImageNet weights")
        with pytest.raises(TkError, match="no finished run .*b, failed: resnet50 has no ImageNet weights"):
            store.run()


@pytest.mark.parametrize("command", [("similar", "x.png", "--backbone", "tiny"), ("export", "--backbone", "tiny"),
                                     ("explain", "x.png", "--backbone", "tiny"), ("report",), ("sql", "SELECT 1")])
def test_commands_that_read_a_store_refuse_a_missing_one_and_create_none(tmp_path, command):
    (tmp_path / "x.png").write_bytes(b"not read")
    result = run_tk(*command, "--plugin", TINY, cwd=tmp_path)
    assert result.exit_code == 1, result.stdout
    assert "store tk.duckdb does not exist; run `tk run` first or pass --store" in result.stderr
    assert not (tmp_path / "tk.duckdb").exists()


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("hello")
    result = run_tk("sql", "SELECT 1", "--store", path)
    assert result.exit_code == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


def _result_counts(store, run_id):
    con = duckdb.connect(str(store), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT DISTINCT table_name FROM result_tables WHERE run_id = ?",
                                            [run_id]).fetchall()]
        counts = {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchall()[0][0] for t in tables}
        statuses = sorted(con.execute("SELECT analysis, backbone, status FROM analysis_runs WHERE run_id = ?",
                                      [run_id]).fetchall())
        return counts, statuses
    finally:
        con.close()


def _last_run(store):
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchall()[0][0]
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_while_writing_results_then_rerun_equals_clean_run(tmp_path, breakhis):
    args = ["run", breakhis, "--backbone", "tiny", "--weights", "random", "--export", "none", "--plugin", TINY]
    clean = tmp_path / "clean.duckdb"
    assert run_tk(*args, "--store", clean).exit_code == 0
    expected = _result_counts(clean, _last_run(clean))
    assert len(expected[0]) >= 5
    rng = random.Random(11)
    for attempt in range(2):
        store = tmp_path / f"killed{attempt}.duckdb"
        _kill_after(args, store, "running", rng.uniform(0.05, 1.5))
        assert run_tk(*args, "--store", store).exit_code == 0
        assert _result_counts(store, _last_run(store)) == expected
        con = duckdb.connect(str(store), read_only=True)
        assert con.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchall() == [(32, 32)]
        assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM emb_tiny__random_seed0").fetchall() == [(32, 32)]
        con.close()
