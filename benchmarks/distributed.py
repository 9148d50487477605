"""The Ray engine against the local engine, a simulated multi-node cluster, and the driver's ingest rate.

    python benchmarks/distributed.py --images 240 --backbone resnet50

Arms (each `tk run` in a fresh interpreter, into a fresh store, on the same generated BreakHis-sized
700x460 PNGs, random weights, --analysis none --export none):
  local     --engine local
  ray       --engine ray with a local Ray of this machine's cores (started by the run, counted)
  nodes-K   --engine ray --ray-address of a cluster started here with ray.cluster_utils.Cluster: a
            head with 0 CPUs and K worker nodes of 1 CPU each (K = 1, 2), each node its own raylet
  ingest    store.shards.ingest_shards over synthetic shards (32 rows each, the default batch) of --ingest-dim
            vectors: rows/s into DuckDB

Each tk arm reports the whole run's wall time and the embedding phase's ("embedded N images in X s",
which for Ray includes starting Ray and the actors), and for Ray the steady rate: images between the
first and the last shard written over the time between them (actors built, Ray up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from extract import make_dataset  # noqa: E402  (benchmarks/extract.py: generated BreakHis-sized PNGs)


def tk_run(data: Path, store: Path, backbone: str, *extra: str) -> dict:
    """One `tk run`, timed; returns wall time, the embedding phase's time and (Ray) the steady rate."""
    command = [sys.executable, "-m", "toolkit", "run", str(data), "-b", backbone, "-w", "random", "--store", str(store),
               "--analysis", "none", "--export", "none", *extra]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TK_LOAD_PLUGINS": ""})
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    found = re.search(r"embedded (\d+) images in ([\d.]+) s", completed.stderr)
    images, embed_s = int(found.group(1)), float(found.group(2))
    result = {"images": images, "wall_s": round(wall, 1), "embed_s": embed_s,
              "embed_img_s": round(images / embed_s, 2), "run_img_s": round(images / wall, 2)}
    shards = store.with_name(store.stem + ".shards")
    if "--engine" in extra and shards.is_dir():
        result.update(steady_rate(shards))
    return result


def steady_rate(shards: Path) -> dict:
    """Images/s between the first and the last shard written (one backbone: one shard per task)."""
    import pyarrow.parquet as pq

    files = sorted(shards.glob("*/*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(files) < 2:
        return {}
    first, last = files[0].stat().st_mtime, files[-1].stat().st_mtime
    images = sum(pq.read_metadata(p).num_rows for p in files[1:])
    return {"shards": len(files), "steady_img_s": round(images / (last - first), 2) if last > first else None}


def on_cluster(data: Path, root: Path, backbone: str, nodes: int) -> dict:
    """`tk run --engine ray` against a cluster of a 0-CPU head and ``nodes`` worker nodes of 1 CPU."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        return tk_run(data, root / f"nodes{nodes}.duckdb", backbone, "--engine", "ray", "--ray-address", cluster.address)
    finally:
        cluster.shutdown()


def ingest_rate(root: Path, rows: int, dim: int, per_shard: int = 32) -> dict:
    """Rows/s of the driver's ingest (``store.shards.ingest_shards``) over ``rows`` synthetic rows."""
    import numpy as np

    from toolkit.store import Store
    from toolkit.store.shards import ShardSet, write_shard

    shard_set = ShardSet("bench", "random-seed0", dim, "fp32", "random")
    rng = np.random.default_rng(0)
    folder = root / "ingest.shards"
    for start in range(0, rows, per_shard):
        count = min(per_shard, rows - start)
        write_shard(folder, shard_set, [f"{k:064x}" for k in range(start, start + count)],
                    rng.normal(size=(count, dim)).astype(np.float32))
    with Store.open(root / "ingest.duckdb") as store:
        started = time.perf_counter()
        [done] = store.shards.ingest_shards(folder)
        seconds = time.perf_counter() - started
    assert done.new_rows == rows
    return {"rows": rows, "dim": dim, "shards": done.shards, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--ingest-rows", type=int, default=32_000)
    parser.add_argument("--ingest-dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1, help="local and ray arms, interleaved")
    parser.add_argument("--skip", nargs="*", default=[], help="arms to leave out: local ray nodes ingest")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "tk-bench-data")
    args = parser.parse_args()
    data = make_dataset(args.data_root, args.images)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for repeat in range(args.repeats):  # interleaved, so that a busy neighbour slows both alike
            suffix = f"-{repeat + 1}" if args.repeats > 1 else ""
            if "local" not in args.skip:
                results[f"local{suffix}"] = tk_run(data, root / f"local{suffix}.duckdb", args.backbone)
            if "ray" not in args.skip:
                results[f"ray{suffix}"] = tk_run(data, root / f"ray{suffix}.duckdb", args.backbone, "--engine", "ray")
        if "nodes" not in args.skip:
            for nodes in (1, 2):
                results[f"nodes-{nodes}"] = on_cluster(data, root, args.backbone, nodes)
        if "ingest" not in args.skip:
            results["ingest"] = ingest_rate(root, args.ingest_rows, args.ingest_dim)
    print(json.dumps(results, indent=1))
    print(f"\n{args.images} images, {args.backbone}, {os.cpu_count()} cores")
    for arm, found in results.items():
        if arm != "ingest":
            print(f"{arm:>8}  run {found['run_img_s']:6.2f} img/s  embedding phase {found['embed_img_s']:6.2f} img/s"
                  + (f"  steady {found['steady_img_s']} img/s" if found.get("steady_img_s") else ""))
    pairs = [(results[k], results["ray" + k[5:]]) for k in results if k.startswith("local") and "ray" + k[5:] in results]
    for key in ("run_img_s", "embed_img_s"):
        ratios = [ray[key] / local[key] for local, ray in pairs]
        if ratios:
            print(f"ray / local ({key}): {' '.join(f'{r:.2f}' for r in ratios)}")
    if "ingest" in results and "nodes-1" in results:
        per_node = results["nodes-1"].get("steady_img_s") or results["nodes-1"]["embed_img_s"]
        rate = results["ingest"]["rows_per_s"]
        print(f"ingest {rate} rows/s (dim {args.ingest_dim}); one 1-CPU node makes {per_node} rows/s of {args.backbone}: "
              f"ingest keeps up with ~{rate / per_node:.0f} such nodes")


if __name__ == "__main__":
    main()
