"""What each extraction lever gives: `tk run` with one lever undone at a time, side by side.

Every arm runs `tk run DATA --backbone B --weights random --analysis none --export none` into a fresh
store in its own interpreter, with one of tk's extraction choices replaced by the plain alternative
(by patching tk inside that interpreter only), and reports the wall time of the extraction phase
and of the whole run. Arms are interleaved over ``--repeats`` rounds so machine noise hits them
alike; the table prints the median and the ratio against tk as shipped.

    python benchmarks/levers.py --images 256 --backbone resnet50,efficientnetb0 --repeats 2

Arms (each undoes one lever):
  tk              tk as shipped
  decode-per-bb   decode the images again for every backbone (tk decodes once for all)
  serial-decode   one decode thread (tk decodes in parallel threads)
  eager           call the model eagerly per batch (tk traces one graph with a fixed batch shape)
  predict         `model.predict` per batch, last batch unpadded (tk pads to a fixed shape)
  batch-16/64     batch size 16 or 64 instead of 32
  interop-1       TF_NUM_INTEROP_THREADS=1 (a thread setting; tk keeps TensorFlow's default)
  no-fold         keep batch norms as layers (tk folds them into the convolutions before them)
It also prints where tk's own extraction time goes: hashing (scan), DuckDB writes, model calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.extract import make_dataset  # noqa: E402

ARMS = ("tk", "decode-per-bb", "serial-decode", "eager", "predict", "batch-16", "batch-64", "interop-1", "no-fold")


def _timed(function: Callable, totals: dict[str, float], key: str) -> Callable:
    """``function``, with the seconds of its calls added up in ``totals[key]``."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def _undo_lever(arm: str) -> list[str]:
    """Patch tk in this interpreter so that ``arm``'s lever is undone; returns extra `tk run` args."""
    from toolkit.extract import pipeline
    from toolkit.extract.tfimport import tensorflow
    from toolkit.run import embed

    if arm == "decode-per-bb":
        original = embed.extract

        def per_backbone(images, jobs, *args, **kwargs):
            done = []
            for job in jobs:
                done = original(images, [job], *args, **kwargs)
            return done

        embed.extract = per_backbone
    elif arm == "serial-decode":
        original_batches = pipeline.decoded_batches
        pipeline.decoded_batches = lambda sources, sizes, batch_size, threads, stain=None: original_batches(
            sources, sizes, batch_size, 1, stain)
    elif arm in ("eager", "predict"):
        def plain_extractor(backbone, model, batch_size):
            tf = tensorflow()
            if arm == "eager":
                return lambda batch: model(backbone.preprocess(tf.cast(batch, tf.float32)), training=False).numpy()
            return lambda batch: model.predict(backbone.preprocess(batch.astype("float32")), verbose=0)

        pipeline.make_extractor = plain_extractor
        if arm == "predict":
            pipeline._pad = lambda batch, size: batch
    elif arm == "no-fold":  # tk run folds where it builds a model (toolkit.run.embed imports this at call time)
        from toolkit.extract import folding

        folding.fold_batch_norm = lambda model: model
    elif arm.startswith("batch-"):
        return ["--batch-size", arm.split("-")[1]]
    return []


def arm_main(arm: str, data: str, store: str, backbones: str) -> dict:
    """One arm in this interpreter: returns seconds of the run, extraction, scan, writes, model calls."""
    from toolkit.extract import pipeline
    from toolkit.run import embed, job
    from toolkit.store import store as store_module
    from toolkit.cli import main

    extra = _undo_lever(arm)
    totals: dict[str, float] = {}
    embed.extract = _timed(embed.extract, totals, "extract")
    job.scan = _timed(job.scan, totals, "scan")
    store_module.Store.write_batch = _timed(store_module.Store.write_batch, totals, "writes")
    make_extractor = pipeline.make_extractor
    pipeline.make_extractor = lambda *args: _timed(make_extractor(*args), totals, "model")
    started = time.perf_counter()
    try:
        main(["run", data, "--backbone", backbones, "--weights", "random", "--store", store,
              "--analysis", "none", "--export", "none", *extra])
    except SystemExit as exc:
        if exc.code:
            raise
    totals["run"] = time.perf_counter() - started
    return totals


def run_arm(arm: str, data: Path, work: Path, backbones: str) -> dict:
    """One arm in a fresh interpreter and a fresh store."""
    store = work / f"levers-{arm}.duckdb"
    store.unlink(missing_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if arm == "interop-1":
        env["TF_NUM_INTEROP_THREADS"] = "1"
    done = subprocess.run([sys.executable, __file__, "--arm", arm, str(data), str(store), backbones],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbone", default="resnet50,efficientnetb0")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tk-bench")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm_main(args.arm, *args.rest)))
        return

    data = make_dataset(args.work, args.images)
    arms = [a.strip() for a in args.arms.split(",")]
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm in arms:
            results[arm].append(run_arm(arm, data, args.work, args.backbone))
    median = {arm: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for arm, runs in results.items()}
    base = median.get("tk")
    print(f"\n{args.images} images, backbones {args.backbone}, median of {args.repeats} interleaved rounds")
    print(f"{'arm':>14} {'extract s':>10} {'run s':>7} {'img/s':>7} {'arm/tk':>7}")
    for arm, m in median.items():
        ratio = f"{m['extract'] / base['extract']:.2f}" if base else "-"
        print(f"{arm:>14} {m['extract']:>10.1f} {m['run']:>7.1f} {args.images / m['extract']:>7.2f} {ratio:>7}")
    if base:
        print(f"\ninside tk's extraction ({base['extract']:.1f} s): model calls {base['model']:.1f} s, "
              f"DuckDB writes {base['writes']:.2f} s; hashing before it (scan) {base['scan']:.1f} s")


if __name__ == "__main__":
    main()
