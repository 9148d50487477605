"""``tk run --engine ray`` on a local Ray: the same rows and vectors as the local engine, and a run
whose worker or driver was killed resumes from its finished shards without recomputing them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import PLUGINS, TINY
from toolkit.run.job import execute_run
from toolkit.run.settings import RunSettings
from toolkit.store import Store

ray = pytest.importorskip("ray")

SLOW = PLUGINS / "slow_backbone.py"
IMAGE_COLUMNS = "path, relpath, sha256, source, label, subtype, magnification, patient_id, width, height"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module's in-process runs (the engine leaves a running Ray alone)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TK_LOAD_PLUGINS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield
    ray.shutdown()


def _settings(data: Path, store: Path, engine: str, backbone: str = "tiny", plugin: Path = TINY,
              **options) -> RunSettings:
    return RunSettings(data=data, backbones=[backbone], weights="random", store=store, plugins=[str(plugin)],
                       analyses=[], exports=[], engine=engine, **options)


def _vectors(store: Path, table: str) -> dict[str, np.ndarray]:
    with Store.open(store, read_only=True) as opened:
        return {sha: np.asarray(v, np.float32) for sha, v in opened.con.execute(f"SELECT sha256, vector FROM {table}").fetchall()}


def _images(store: Path) -> list[tuple]:
    with Store.open(store, read_only=True) as opened:
        return opened.con.execute(f"SELECT {IMAGE_COLUMNS} FROM images ORDER BY path").fetchall()


def _shard_rows(folder: Path) -> dict[Path, list[str]]:
    return {path: pq.read_table(path, columns=["sha256"]).column("sha256").to_pylist()
            for path in sorted(folder.glob("*/*.parquet"))}


def _cosines(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([a[s] @ b[s] / (np.linalg.norm(a[s]) * np.linalg.norm(b[s])) for s in a])


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_rows_and_vectors(local_ray, tmp_path, breakhis):
    local, distributed, shards = tmp_path / "local.duckdb", tmp_path / "ray.duckdb", tmp_path / "shards"
    assert execute_run(_settings(breakhis, local, "local", batch_size=8)).status == "ok"
    summary = execute_run(_settings(breakhis, distributed, "ray", batch_size=8, shards=shards))
    assert summary.status == "ok" and summary.n_images == 32
    assert _images(distributed) == _images(local)
    expected, got = _vectors(local, "emb_tiny__random_seed0"), _vectors(distributed, "emb_tiny__random_seed0")
    assert sorted(got) == sorted(expected) and len(got) == 32
    # the same code path (read_verified, load_rgb, preprocess, folded graph); only TensorFlow's thread
    # count differs (1 per actor), which may reorder float sums
    assert _cosines(expected, got).min() >= 0.99999
    np.testing.assert_allclose(np.array([got[s] for s in expected]), np.array(list(expected.values())), atol=1e-5)
    assert sum(len(rows) for rows in _shard_rows(shards).values()) == 32  # 4 tasks of 8, one shard each
    with Store.open(distributed, read_only=True) as opened:
        assert opened.one("SELECT n_embedded, status FROM run_backbones WHERE run_id = ?", [summary.run_id]) == (32, "ok")

    again = execute_run(_settings(breakhis, distributed, "ray", batch_size=8, shards=shards))
    assert again.n_images == 32 and len(_shard_rows(shards)) == 4  # nothing missing: no task, no new shard


def _descendants(root: int) -> list[int]:
    """Processes below ``root`` (from /proc), children first listed after their parents."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _check_resumed(store: Path, shards: Path, before: dict[Path, list[str]], clean: Path) -> None:
    """The re-run stored exactly the clean run's rows and embedded only what no finished shard held."""
    after = _shard_rows(shards)
    assert set(before) <= set(after)  # finished shards are kept
    done_before = {sha for rows in before.values() for sha in rows}
    new_rows = [sha for path, rows in after.items() if path not in before for sha in rows]
    expected = _vectors(clean, "emb_slow__random_seed0")
    assert len(new_rows) == len(expected) - len(done_before)  # completed shards were not recomputed
    assert not set(new_rows) & done_before
    got = _vectors(store, "emb_slow__random_seed0")
    assert sorted(got) == sorted(expected)
    assert _cosines(expected, got).min() >= 0.99999
    with Store.open(store, read_only=True) as opened:
        assert opened.one("SELECT count(*), count(DISTINCT sha256) FROM emb_slow__random_seed0") == (32, 32)
    assert _images(store) == _images(clean)


def _wait_for_shards(folder: Path, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*/*.parquet"))) < count:
        assert time.monotonic() < deadline, f"fewer than {count} shards in {folder} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_the_rerun_recomputes_no_finished_shard(local_ray, tmp_path, breakhis):
    store, shards, clean = tmp_path / "tk.duckdb", tmp_path / "shards", tmp_path / "clean.duckdb"
    execute_run(_settings(breakhis, clean, "local", "slow", SLOW, batch_size=1))
    killed: list[int] = []

    def kill_a_worker() -> None:
        _wait_for_shards(shards, 2)
        workers = [pid for pid in _descendants(os.getpid()) if "EmbedActor" in _command(pid)]
        os.kill(workers[0], signal.SIGKILL)
        killed.append(workers[0])

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        execute_run(_settings(breakhis, store, "ray", "slow", SLOW, batch_size=1, shards=shards))
    except Exception:  # Ray may give up on the killed actor's task; what finished stays in the shards
        pass
    killer.join()
    assert killed
    before = _shard_rows(shards)
    execute_run(_settings(breakhis, store, "ray", "slow", SLOW, batch_size=1, shards=shards))
    _check_resumed(store, shards, before, clean)


@pytest.mark.slow
def test_a_sigkilled_driver_loses_nothing_and_the_rerun_recomputes_no_finished_shard(tmp_path, breakhis):
    store, shards, clean = tmp_path / "tk.duckdb", tmp_path / "shards", tmp_path / "clean.duckdb"
    execute_run(_settings(breakhis, clean, "local", "slow", SLOW, batch_size=1))
    command = [sys.executable, "-m", "toolkit", "run", str(breakhis), "--plugin", str(SLOW), "-b", "slow", "-w", "random",
               "--store", str(store), "--analysis", "none", "--export", "none", "--engine", "ray", "--batch-size", "1",
               "--shards", str(shards)]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        try:
            _wait_for_shards(shards, 3)
        finally:
            started = _descendants(driver.pid)  # its local Ray: clean up only these, by pid
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            for pid in started:
                if Path(f"/proc/{pid}").exists():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    before = _shard_rows(shards)
    assert 3 <= len(before) < 32  # killed in the middle: 32 tasks of 1 image
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "ingested" in rerun.stderr
    _check_resumed(store, shards, before, clean)
