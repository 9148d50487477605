"""Parquet shards (``toolkit.store.shards``) and ``tk ingest``: atomic writes, idempotent ingest,
bad rows refused, and ``tk run --engine ray`` without Ray installed. None of these needs Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY, tk
from toolkit.errors import TkError
from toolkit.ingest.scan import sha256_file
from toolkit.store import Store
from toolkit.store.shards import ShardSet, read_set, shard_files, shard_schema, write_shard

TINY_SET = ShardSet("tiny", "random-seed0", 16, "fp32", "random")


def _shas(n: int) -> list[str]:
    return [f"{k:064x}" for k in range(n)]


def test_a_shard_is_written_under_its_final_name_only_when_complete(tmp_path):
    path = write_shard(tmp_path, TINY_SET, _shas(3), np.ones((3, 16), np.float32))
    assert path.parent == tmp_path / "emb_tiny__random_seed0" and path.suffix == ".parquet"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    table = pq.read_table(path)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    assert table.column("set").to_pylist() == ["emb_tiny__random_seed0"] * 3
    assert read_set(path) == TINY_SET
    (path.parent / ".half.parquet.partial").write_bytes(b"PAR1 cut off")  # a writer killed mid-file
    assert shard_files(tmp_path) == {"emb_tiny__random_seed0": [path]}


def test_non_finite_vectors_are_never_written(tmp_path):
    vectors = np.ones((2, 16), np.float32)
    vectors[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_shard(tmp_path, TINY_SET, _shas(2), vectors)
    assert not list(tmp_path.rglob("*.parquet"))


def test_ingest_is_idempotent_and_reads_each_shard_once(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 16)).astype(np.float32)
    first = write_shard(tmp_path / "shards", TINY_SET, _shas(4), vectors[:4])
    write_shard(tmp_path / "shards", TINY_SET, _shas(6)[2:], vectors[2:])  # overlaps the first on 2 rows
    with Store.open(tmp_path / "tk.duckdb") as store:
        [done] = store.shards.ingest_shards(tmp_path / "shards", "run-1")
        assert (done.shards, done.rows, done.new_rows, done.rejected) == (2, 8, 6, 0)
        assert store.shards.ingest_shards(tmp_path / "shards") == []  # recorded: not read again
        (first.parent / "copy.parquet").write_bytes(first.read_bytes())  # the same rows under a new name
        [again] = store.shards.ingest_shards(tmp_path / "shards")
        assert (again.shards, again.rows, again.new_rows) == (1, 4, 0)
        stored = dict(store.con.execute("SELECT sha256, vector FROM emb_tiny__random_seed0").fetchall())
        assert store.one("SELECT weights_kind FROM embedding_sets WHERE table_name = 'emb_tiny__random_seed0'") == ("random",)
    assert sorted(stored) == _shas(6)
    np.testing.assert_array_equal(np.array([stored[s] for s in _shas(6)], np.float32), vectors)


def test_ingest_refuses_bad_rows_of_a_foreign_shard(tmp_path):
    """A shard written by other code: NaN, infinite, a malformed sha256 and another set's rows stay out."""
    folder = tmp_path / "shards" / "emb_tiny__random_seed0"
    folder.mkdir(parents=True)
    vectors = np.ones((5, 16), np.float32)
    vectors[1, 0], vectors[2, 5] = np.nan, np.inf
    shas = _shas(5)
    shas[3] = "not-a-sha"
    sets = ["emb_tiny__random_seed0"] * 4 + ["emb_other__random_seed0"]
    table = pa.Table.from_arrays([pa.array(shas), pa.array(sets),
                                  pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)],
                                 schema=shard_schema(TINY_SET))
    pq.write_table(table, folder / "foreign.parquet")
    with Store.open(tmp_path / "tk.duckdb") as store:
        [done] = store.shards.ingest_shards(tmp_path / "shards")
        assert (done.rows, done.new_rows, done.rejected) == (5, 1, 4)
        assert store.con.execute("SELECT sha256 FROM emb_tiny__random_seed0").fetchall() == [(_shas(1)[0],)]


def test_a_shard_without_set_metadata_is_a_one_line_error(tmp_path):
    folder = tmp_path / "emb_tiny__random_seed0"
    folder.mkdir()
    pq.write_table(pa.table({"sha256": _shas(1)}), folder / "bare.parquet")
    with Store.open(tmp_path / "tk.duckdb") as store, pytest.raises(TkError, match="no tk.set metadata"):
        store.shards.ingest_shards(tmp_path)


def test_tk_ingest_then_tk_run_reuses_the_ingested_vectors(tmp_path, breakhis):
    """Shards from a cluster job that ran without the tk driver: ``tk ingest`` stores them, and a
    later ``tk run`` finds every image embedded."""
    paths = sorted(breakhis.rglob("*.png"))
    shas = sorted({sha256_file(p) for p in paths})
    vectors = np.random.default_rng(1).normal(size=(len(shas), 16)).astype(np.float32)
    write_shard(tmp_path / "cluster", TINY_SET, shas, vectors)
    store = tmp_path / "tk.duckdb"
    ingested = tk("ingest", tmp_path / "cluster", "--store", store)
    assert ingested.exit_code == 0, ingested.stderr
    assert f"{len(shas)} new" in ingested.stderr
    result = tk("run", breakhis, "--plugin", TINY, "-b", "tiny", "-w", "random", "--store", store,
                "--analysis", "none", "--export", "none")
    assert result.exit_code == 0, result.stderr
    assert "nothing to extract" in result.stderr
    with Store.open(store, read_only=True) as opened:
        stored = dict(opened.con.execute("SELECT sha256, vector FROM emb_tiny__random_seed0").fetchall())
        assert opened.one("SELECT count(*) FROM images") == (len(paths),)
    np.testing.assert_array_equal(np.array([stored[s] for s in shas], np.float32), vectors)


NO_RAY = """  # a fresh interpreter, so that no test before has imported Ray
import sys
sys.modules["ray"] = None  # as if Ray were not installed
from toolkit.cli import main
main(sys.argv[1:])
"""


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, breakhis):
    completed = subprocess.run([sys.executable, "-c", NO_RAY, "run", str(breakhis), "--plugin", str(TINY), "-b", "tiny",
                                "--store", str(tmp_path / "tk.duckdb"), "--engine", "ray"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "pip install 'tk-embeddings[ray]'" in lines[0]
    assert not (tmp_path / "tk.duckdb").exists()  # refused before any work


def test_engine_ray_with_stain_normalisation_is_refused_before_any_work(tmp_path, breakhis):
    """Ray's workers do not normalise stains: a run asking for both would store raw vectors under a
    stained set's key, so it is one line, before the store is even created."""
    result = tk("run", breakhis, "--plugin", TINY, "-b", "tiny", "--store", tmp_path / "tk.duckdb",
                "--engine", "ray", "--stain", "macenko")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: --stain macenko is not supported with --engine ray yet: run it with --engine local, or without "
        "--stain on Ray"]
    assert not (tmp_path / "tk.duckdb").exists()


def test_a_worker_skips_a_changed_file_and_writes_no_non_finite_vector(tmp_path, breakhis):
    """The Ray actor, called directly: a file whose bytes no longer hash to the planned sha256 is
    reported and not embedded; a backbone giving NaN writes no shard and reports why."""
    from toolkit.extract.distributed import EmbedActor, WorkerJob

    paths = sorted(breakhis.rglob("*.png"))[:3]
    shas = [sha256_file(p) for p in paths]
    paths[1].write_bytes(paths[1].read_bytes() + b"changed after the scan")
    nan_set = ShardSet("nan", "random-seed0", 4, "fp32", "random")
    jobs = [WorkerJob("tiny", "random", 0, TINY_SET), WorkerJob("nan", "random", 0, nan_set)]
    actor = EmbedActor(jobs, [str(TINY), str(TINY.parent / "nan_backbone.py")], str(tmp_path / "shards"), 2, 1)
    both = f"{TINY_SET.embedding_set.table},{nan_set.embedding_set.table}"
    report = actor({"sha256": np.array(shas), "path": np.array([str(p) for p in paths]), "sets": np.array([both] * 3)})
    assert json.loads(report["unreadable"][0]) == {shas[1]: "changed since it was scanned; run again"}
    assert json.loads(report["embedded"][0]) == {"emb_tiny__random_seed0": 2}
    assert "NaN or infinite" in json.loads(report["errors"][0])["emb_nan__random_seed0"]
    [shard] = [Path(p) for p in json.loads(report["shards"][0])]
    assert pq.read_table(shard).column("sha256").to_pylist() == [shas[0], shas[2]]
    assert shard_files(tmp_path / "shards") == {"emb_tiny__random_seed0": [shard]}
