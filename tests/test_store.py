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
from tests.conftest import PLUGINS, TINY, run_tk, tk
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
    assert tk(*args, "--store", clean).exit_code == 0
    expected = _contents(clean)
    assert len(expected[0]) == 48 and len(expected[1]) == 48

    rng = random.Random(7)
    for attempt in range(3):
        store = tmp_path / f"killed{attempt}.duckdb"
        _kill_after(args, store, "embedding 48 images with slow", rng.uniform(0.2, 2.5))  # 12 batches take ~3 s
        assert len(_contents(store)[1]) < 48, "the kill came too late to test anything"
        resumed = tk(*args, "--store", store)
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
    try:  # a fresh process: the lock is held by another process (this one)
        result = run_tk("run", breakhis, "--backbone", "tiny", "--store", store, "--plugin", TINY)
    finally:
        holder.close()
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"error: store {store} is in use by process {os.getpid()} (DuckDB allows one writer); "
                         "wait for it to finish or use another --store")


def test_sql_is_read_only_by_default(finished_store):
    store = finished_store
    counted = tk("sql", "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label",
                 "--store", store, "--format", "csv")
    assert counted.stdout.splitlines() == ["label,n", "benign,16", "malignant,16"]
    dropped = tk("sql", "DROP TABLE images", "--store", store)
    assert dropped.exit_code == 1 and "read-only" in dropped.stderr.lower()
    assert tk("sql", "SELECT count(*) AS n FROM images", "--store", store, "--format", "csv").stdout.splitlines() == ["n", "32"]


def _store_with_one_image(path):
    """A migrated store whose ``images`` table holds one row."""
    with Store.open(path) as store:
        store.con.execute("INSERT INTO images (path, relpath, sha256) VALUES ('a.png', 'a.png', 'x')")


def _image_count(path):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM images").fetchall()[0][0]
    finally:
        con.close()


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_sql_reaches_no_file_but_the_store(tmp_path):
    """Neither read-only nor --write `tk sql` attaches, writes or reads another file (issue #20)."""
    store, other, victim = tmp_path / "tk.duckdb", tmp_path / "other.duckdb", tmp_path / "victim.duckdb"
    _store_with_one_image(store)
    _store_with_one_image(other)
    victim.write_bytes(b"keep me")
    before = _files(tmp_path)
    attacks = [
        f"ATTACH '{other}' AS other (READ_WRITE); DELETE FROM other.images",
        f"COPY (SELECT 'x') TO '{victim}'",
        f"EXPORT DATABASE '{tmp_path / 'exported'}'",
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT * FROM read_csv('{victim}')",
        "SELECT * FROM glob('/etc/*')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
    ]
    store_itself = (f"ATTACH ':memory:' AS scratch; USE scratch; DETACH tk; ATTACH '{store}' AS tk2 (READ_WRITE); "
                    "DELETE FROM tk2.images")  # changing the store is what --write is for
    for mode, tried in (((), [*attacks, store_itself]), (("--write",), attacks)):
        for attack in tried:
            result = tk("sql", attack, "--store", store, *mode)
            assert result.exit_code == 1, (mode, attack, result.stdout)
            assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _files(tmp_path) == before
    assert _image_count(store) == 1 and _image_count(other) == 1
    written = tk("sql", "DELETE FROM images", "--store", store, "--write")
    assert written.exit_code == 0, written.stderr
    assert _image_count(store) == 0


def test_sql_reads_only_the_files_allowed_and_writes_none(tmp_path):
    store, inbox = tmp_path / "tk.duckdb", tmp_path / "inbox"
    _store_with_one_image(store)
    inbox.mkdir()
    (inbox / "labels.csv").write_text("relpath,label\na.png,benign\n")
    read = tk("sql", f"SELECT i.relpath, l.label FROM images i JOIN read_csv('{inbox / 'labels.csv'}') l "
              "USING (relpath)", "--store", store, "--format", "csv", "--allow-files", inbox)
    assert read.exit_code == 0, read.stderr
    assert read.stdout.splitlines() == ["relpath,label", "a.png,benign"]
    before = _files(tmp_path)
    for attack in [f"COPY (SELECT 'x') TO '{inbox / 'labels.csv'}'", f"ATTACH '{inbox / 'new.duckdb'}' AS n",
                   "SELECT * FROM read_text('/etc/passwd')"]:
        result = tk("sql", attack, "--store", store, "--allow-files", inbox)
        assert result.exit_code == 1 and result.stderr.startswith("error: "), (attack, result.stderr)
    assert _files(tmp_path) == before
    both = tk("sql", "SELECT 1", "--store", store, "--write", "--allow-files", inbox)
    assert both.exit_code == 1 and "--allow-files" in both.stderr
    missing = tk("sql", "SELECT 1", "--store", store, "--allow-files", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no such file or folder" in missing.stderr
    assert "--allow-files" in tk("sql", "--help").stdout


def test_sql_allow_files_refuses_a_folder_with_a_symlink_leading_out_of_it(tmp_path):
    """A symlink inside an allowed folder gave read access to its target outside (issue #20, limits)."""
    store, inbox, outside = tmp_path / "tk.duckdb", tmp_path / "inbox", tmp_path / "secret"
    _store_with_one_image(store)
    inbox.mkdir()
    outside.mkdir()
    (outside / "key.csv").write_text("secret\nhunter2\n")
    (inbox / "labels.csv").write_text("relpath,label\na.png,benign\n")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "key.csv").symlink_to(outside / "key.csv")
    (inbox / "same.csv").symlink_to(inbox / "labels.csv")  # a link that stays inside is fine
    query = f"SELECT * FROM read_csv('{inbox / 'sub' / 'key.csv'}')"
    leaked = tk("sql", query, "--store", store, "--allow-files", inbox)
    assert leaked.exit_code == 1 and "hunter2" not in leaked.stdout, leaked.stdout
    assert leaked.stderr.strip() == (f"error: --allow-files {inbox}: the symlink {inbox / 'sub' / 'key.csv'} leads out "
                                     f"of it (to {outside / 'key.csv'}); remove the link, or name its target with "
                                     "--allow-files too")
    (inbox / "sub" / "key.csv").unlink()
    (inbox / "up").symlink_to(outside)  # a linked folder leading out
    assert "the symlink" in tk("sql", "SELECT 1", "--store", store, "--allow-files", inbox).stderr
    allowed = tk("sql", f"SELECT * FROM read_csv('{inbox / 'up' / 'key.csv'}')", "--store", store,
                 "--allow-files", inbox, "--allow-files", outside, "--format", "csv")
    assert allowed.exit_code == 0 and allowed.stdout.splitlines() == ["secret", "hunter2"], allowed.stderr
    (inbox / "up").unlink()
    inside = tk("sql", f"SELECT * FROM read_csv('{inbox / 'same.csv'}')", "--store", store, "--allow-files",
                inbox, "--format", "csv")
    assert inside.exit_code == 0 and inside.stdout.splitlines() == ["relpath,label", "a.png,benign"], inside.stderr


def test_migrations_apply_once(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store.open(path):
        pass
    with Store.open(path) as store:
        names = [r[0] for r in store.con.execute("SELECT name FROM _migrations").fetchall()]
    assert names == [m.__name__ for m in MIGRATIONS]


@pytest.mark.parametrize("read_only", [False, True])
def test_a_store_from_a_newer_tk_is_refused_with_upgrade_tk(tmp_path, read_only):
    """A schema migration this tk does not know means a newer tk wrote the store (issue #20, item 14)."""
    path = tmp_path / "s.duckdb"
    with Store.open(path) as store:
        store.con.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', current_timestamp)")
    with pytest.raises(TkError, match=r"store .*s.duckdb was written by a newer tk \(schema m999_from_the_future\); "
                                      r"upgrade tk"):
        Store.open(path, read_only=read_only)


def test_the_default_run_is_the_latest_finished_one_and_a_failed_run_keeps_its_error(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.runs.start_run("a", "tk run", {}, {})
        store.runs.update_run("a", status="ok")
        store.runs.start_run("b", "tk run", {}, {})
        store.runs.update_run("b", status="failed", error="resnet50 has no ImageNet weights")
        assert store.runs.run()["run_id"] == "a"
        assert store.runs.run("b")["error"] == "resnet50 has no ImageNet weights"


def test_a_store_with_only_a_failed_run_says_why(tmp_path):
    with Store.open(tmp_path / "s.duckdb") as store:
        store.runs.start_run("b", "tk run", {}, {})
        store.runs.update_run("b", status="failed", error="resnet50 has no ImageNet weights")
        with pytest.raises(TkError, match="no finished run .*b, failed: resnet50 has no ImageNet weights"):
            store.runs.run()


@pytest.mark.parametrize("command", [("similar", "x.png", "--backbone", "tiny"), ("export", "--backbone", "tiny"),
                                     ("explain", "x.png", "--backbone", "tiny"), ("report",), ("sql", "SELECT 1")])
def test_commands_that_read_a_store_refuse_a_missing_one_and_create_none(tmp_path, command):
    (tmp_path / "x.png").write_bytes(b"not read")
    result = tk(*command, "--plugin", TINY, cwd=tmp_path)
    assert result.exit_code == 1, result.stdout
    assert "store tk.duckdb does not exist; run `tk run` first or pass --store" in result.stderr
    assert not (tmp_path / "tk.duckdb").exists()


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("hello")
    result = tk("sql", "SELECT 1", "--store", path)
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
    assert tk(*args, "--store", clean).exit_code == 0
    expected = _result_counts(clean, _last_run(clean))
    assert len(expected[0]) >= 5
    rng = random.Random(11)
    for attempt in range(2):
        store = tmp_path / f"killed{attempt}.duckdb"
        _kill_after(args, store, "running", rng.uniform(0.05, 1.5))
        assert tk(*args, "--store", store).exit_code == 0
        assert _result_counts(store, _last_run(store)) == expected
        con = duckdb.connect(str(store), read_only=True)
        assert con.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchall() == [(32, 32)]
        assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM emb_tiny__random_seed0").fetchall() == [(32, 32)]
        con.close()


def test_analysis_results_never_alter_a_core_table(tmp_path):
    import pandas as pd

    from toolkit.errors import PluginError
    from toolkit.plugin.results import Table

    with Store.open(tmp_path / "tk.duckdb") as store:
        before = store.query_df("DESCRIBE results_figures")
        with pytest.raises(PluginError, match="core table results_figures"):
            store.results.save_results("r1", "figures", "tiny", "ok", "", 0.0, [Table("main", pd.DataFrame({"x": [1]}))])
        assert store.query_df("DESCRIBE results_figures").equals(before)
        assert store.results.run_analyses("r1") == []


def test_a_nan_or_infinite_vector_is_never_stored(tmp_path):
    import numpy as np

    from toolkit.errors import TkError
    from toolkit.store import EmbeddingSet

    embedding_set = EmbeddingSet("tiny", "random_seed0", 2)
    with Store.open(tmp_path / "tk.duckdb") as store:
        store.embeddings.ensure_set(embedding_set, "random", None, None)
        for bad in (np.nan, np.inf):
            with pytest.raises(TkError, match=r"tiny \(fp32\) gave NaN or infinite embeddings; they are never stored"):
                store.embeddings.write_batch("r1", [], {embedding_set: (["a", "b"], np.array([[1.0, 2.0], [bad, 0.0]]))})
        assert store.embeddings.missing(embedding_set, ["a", "b"]) == {"a", "b"}


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_sql_output_escapes_control_characters(tmp_path, fmt):
    """An OSC title sequence or a screen clear in a query result is printed escaped (issue #20, item 6)."""
    store = tmp_path / "s.duckdb"
    _store_with_one_image(store)
    query = "SELECT chr(27) || ']0;pwned' || chr(7) || chr(27) || '[2J' || chr(155) AS t"
    result = tk("sql", query, "--store", store, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert not any(c in result.stdout for c in "\x1b\x07\x9b"), repr(result.stdout)
    assert "]0;pwned" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_says_what_is_kept_marks_the_run_interrupted_and_exits_130(tmp_path, sig):
    """Issue #20, item 13: the message never printed (Click turned Ctrl-C into Abort, exit 1) and the
    run was marked failed."""
    data = tmp_path / "breast"
    make_breakhis(data, patients=2, magnifications=(40, 100, 200), per_magnification=2)  # 48 images, ~3 s
    store = tmp_path / "tk.duckdb"
    process = subprocess.Popen([sys.executable, "-m", "toolkit", "run", str(data), "--backbone", "slow", "--weights",
                                "random", "--batch-size", "4", "--analysis", "none", "--export", "none",
                                "--plugin", str(SLOW), "--store", str(store)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_line(process, "embedding 48 images with slow", timeout=120)
    time.sleep(0.8)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; batches already written are kept, run again to resume" in stderr
    assert "Traceback" not in stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    con.close()
