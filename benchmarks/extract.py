"""Extraction benchmark: tk against the compute bound and against the seed's recipe, side by side.

Generates N BreakHis-sized (700x460) PNGs once, then runs each arm in its own subprocess (so peak RSS
is per arm) and prints images/s, peak RSS and the ratios tk/bound, tk/seed, re-run/first, plus the
RSS slope (MB per extra image) between two dataset sizes for tk and the seed recipe.

    python benchmarks/extract.py --sizes 200 800 --bound-batches 6

Arms:
  bound  each backbone alone on pre-decoded tensors, graph mode, batch 32; three-backbone bound is
         1 / sum(1 / rate_b). Measured as built (the goals' bound) and with its batch norms folded
         into the convolutions, as tk runs it (toolkit.extract.folding), interleaved batch by batch
  tk     `tk run DATA --backbone all --weights random --analysis none --export none` into a fresh store
  seed   the seed's recipe: every image loaded with PIL into one float32 array, model.predict per
         backbone, features written with numpy
  rerun  the same tk run again on the unchanged dataset
  tk-P   with --precisions P...: `tk run --precision P` at the larger size, into its own store
         (int8 twice: converting its models, then with the converted models found in the tk cache)
  int8 on BreakHis's count, with --breakhis-int8: the same two int8 runs on 7,909 distinct images
         (the larger size's PNGs and copies of them with one pixel changed)

With --decoders N, only the decoders are compared instead, on N images, arms interleaved --repeats
times (median), each in its own process: tk's thread pool (toolkit.extract.batches) against the
tf.data pipeline it replaced (kept here, ``tfdata_batches``, only to measure against):

  decode-pool, decode-tfdata   decoding alone (every image to 224x224, batch 32), no network
  tk-pool, tk-tfdata           `tk run DATA --backbone all --weights random --analysis none --export none`,
                               timed around the extraction (networks built before it)
  interleaved                  one process: the three networks built and traced once, then
                               ``toolkit.extract.pipeline.extract`` over the same images with each
                               decoder in turn (ABBA order, 2 x --repeats rounds), vectors not stored:
                               the fairest rate comparison on a busy machine

    python benchmarks/extract.py --decoders 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

BACKBONES = ("resnet50", "efficientnetb0", "densenet201")
BATCH = 32


BREAKHIS_IMAGES = 7909


def breakhis_path(folder: Path, i: int) -> tuple[Path, bool, str]:
    """Where generated image ``i`` goes in BreakHis's layout, whether it is malignant, and its subtype."""
    malignant = i % 2 == 0
    code, label, subtype = ("DC", "malignant", "ductal_carcinoma") if malignant else ("F", "benign", "fibroadenoma")
    patient = f"14-{1000 + i // 100}"
    return folder / label / subtype / f"SOB_{'M' if malignant else 'B'}_{code}-{patient}-200-{i % 100:03d}.png", malignant, subtype


def _write_all(folder: Path, n: int, write: Callable[[int], None]) -> Path:
    """Run ``write(i)`` for i < n in threads into a fresh ``folder``, once: a finished folder is reused."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n)))
    done.write_text("ok")
    return folder


def make_dataset(root: Path, n: int) -> Path:
    """n synthetic BreakHis-named PNGs under root (reused when already there)."""
    import numpy as np

    from toolkit.ingest.demo import synthetic_tile

    folder = root / f"n{n}"

    def write(i: int) -> None:
        path, malignant, subtype = breakhis_path(folder, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_tile(np.random.default_rng(i), malignant, subtype, 200).save(path, compress_level=1)

    return _write_all(folder, n, write)


def make_breakhis_sized(root: Path, source: Path) -> Path:
    """BreakHis's 7,909 images, all distinct: the PNGs of ``source``, then copies of them with one pixel
    changed (re-encoding takes ~2 min on 2 cores; generating 7,909 synthetic tiles would take ~40)."""
    import numpy as np
    from PIL import Image

    folder = root / f"breakhis{BREAKHIS_IMAGES}"
    tiles = sorted(source.rglob("*.png"))

    def write(i: int) -> None:
        path = breakhis_path(folder, i)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        tile = tiles[i % len(tiles)]
        if i < len(tiles):
            shutil.copyfile(tile, path)
            return
        pixels = np.array(Image.open(tile).convert("RGB"))
        pixels[i % pixels.shape[0], (i // pixels.shape[0]) % pixels.shape[1]] ^= np.uint8((i // len(tiles) - 1) % 255 + 1)
        Image.fromarray(pixels).save(path, compress_level=1)

    return _write_all(folder, BREAKHIS_IMAGES, write)


def run_arm(arm: str, *args: str) -> dict:
    """Run one arm in a fresh interpreter; returns its JSON result plus wall time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--arm", arm, *args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"arm {arm} failed ({status})")
    result = json.loads(output.strip().splitlines()[-1]) if output.strip() else {}
    result.update(wall_s=time.perf_counter() - started, peak_rss_mb=usage.ru_maxrss / 1024)
    return result


# --- arms, run inside the subprocess ---------------------------------------------------------

def arm_bound(batches: int) -> dict:
    """Per-backbone images/s of the model alone (the goals' bound) and with its batch norms folded
    into the convolutions, as tk extracts (toolkit.extract.folding)."""
    import numpy as np

    from toolkit.extract.pipeline import make_extractor
    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    rates: dict[str, dict[str, float]] = {"plain": {}, "folded": {}}
    for name in BACKBONES:
        backbone = load_registry().backbone(name)
        model, _ = build_model(backbone, "random", 0)
        batch = np.random.default_rng(0).integers(0, 255, (BATCH, *backbone.input_size, 3), dtype=np.uint8)
        extracts = {graph: make_extractor(backbone, model, BATCH, fold=graph == "folded") for graph in rates}
        seconds = dict.fromkeys(rates, 0.0)
        for extract in extracts.values():
            extract(batch)  # trace and warm up
        for _ in range(batches):  # interleaved, so machine noise hits both alike
            for graph, extract in extracts.items():
                started = time.perf_counter()
                extract(batch)
                seconds[graph] += time.perf_counter() - started
        for graph in rates:
            rates[graph][name] = batches * BATCH / seconds[graph]
    return {"rates": rates["plain"], "bound": 1 / sum(1 / r for r in rates["plain"].values()),
            "folded_rates": rates["folded"], "folded_bound": 1 / sum(1 / r for r in rates["folded"].values())}


def arm_tk(data: str, store: str, precision: str = "fp32", decoder: str = "pool") -> dict:
    """``tk run`` on ``data``; returns the seconds its extraction took (networks built before it), and
    the seconds and images after its first batch (whose time includes tracing the networks' graphs)."""
    from toolkit.cli import main
    from toolkit.extract import pipeline
    from toolkit.run import engine

    if decoder == "tfdata":
        pipeline.decoded_batches = tfdata_batches
    batches: list[tuple[float, int]] = []  # (time, images) as each batch is written

    def timed_extract(images, jobs, writer, run_id, on_progress, *args, **kwargs):
        def progress(n: int) -> None:
            batches.append((time.perf_counter(), n))
            on_progress(n)

        batches.append((time.perf_counter(), 0))
        return pipeline.extract(images, jobs, writer, run_id, progress, *args, **kwargs)

    engine.extract = timed_extract  # what `tk run --engine local` calls
    try:
        main(["run", data, "--backbone", "all", "--weights", "random", "--store", store,
              "--analysis", "none", "--export", "none", "--precision", precision])
    except SystemExit as exc:
        if exc.code:
            raise
    if not batches:
        return {}
    return {"extract_s": batches[-1][0] - batches[0][0], "steady_s": batches[-1][0] - batches[1][0],
            "steady_n": sum(n for _, n in batches[2:])}


def tfdata_batches(sources, sizes, batch_size, threads, stain=None):
    """The tf.data pipeline tk decoded with before its thread pool (map over PIL decoding in
    TensorFlow's threads, batch, prefetch 2, autotune off), yielding the pool's DecodedBatch."""
    import numpy as np

    from toolkit.extract.batches import DecodedBatch
    from toolkit.extract.tfimport import tensorflow
    from toolkit.ingest.images import UnreadableImage

    tf = tensorflow()
    errors: dict[int, str] = {}

    def decode(index):
        index = int(index)
        try:
            return (np.bool_(True), *sources[index].pixels(sizes, stain))
        except UnreadableImage as exc:
            errors[index] = str(exc)
            return (np.bool_(False), *[np.zeros((*size, 3), np.uint8) for size, _ in sizes])

    def tf_decode(index):
        out = tf.numpy_function(decode, [index], [tf.bool, *[tf.uint8] * len(sizes)], stateful=False)
        for tensor, (size, _) in zip(out[1:], sizes):
            tensor.set_shape((*size, 3))
        return (index, *out)

    dataset = tf.data.Dataset.range(len(sources))
    dataset = dataset.map(tf_decode, num_parallel_calls=threads, deterministic=True)
    dataset = dataset.batch(batch_size).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = threads
    for indices, ok, *pixels in dataset.with_options(options).as_numpy_iterator():
        items = range(int(indices[0]), int(indices[-1]) + 1)
        yield DecodedBatch(items, [int(i) for i in indices[ok]], [p[ok] for p in pixels],
                           {int(i): errors.pop(int(i)) for i in indices[~ok]})


def arm_decode(data: str, decoder: str) -> dict:
    """Decode every image of ``data`` to 224x224 in batches of 32 and nothing more; seconds taken."""
    from toolkit.extract.batches import decoded_batches
    from toolkit.extract.pixels import pixel_source
    from toolkit.ingest.scan import scan
    from toolkit.ingest.sources import find_images

    if decoder == "tfdata":
        from toolkit.extract.tfimport import tensorflow

        tensorflow()  # its import is not decoding
    images, _ = scan(find_images(Path(data))[2], {})
    decode = tfdata_batches if decoder == "tfdata" else decoded_batches
    started, cpu_started = time.perf_counter(), time.process_time()
    n = sum(len(batch.readable) for batch in decode([pixel_source(i) for i in images], [((224, 224), "stretch")],
                                                    BATCH, max(2, os.cpu_count() or 2)))
    seconds = time.perf_counter() - started
    return {"extract_s": seconds, "steady_s": seconds, "steady_n": n,
            "cpu_s_per_image": (time.process_time() - cpu_started) / n}


def arm_interleaved(data: str, rounds: int) -> dict:
    """Images/s of extraction with each decoder, alternating on the same built networks."""
    from toolkit.extract import pipeline
    from toolkit.extract.batches import decoded_batches
    from toolkit.extract.folding import fold_batch_norm
    from toolkit.extract.weights import build_model
    from toolkit.ingest.scan import scan
    from toolkit.ingest.sources import find_images
    from toolkit.plugin.registry import load_registry
    from toolkit.store import EmbeddingSet

    class Discard:  # an EmbeddingWriter that keeps nothing: the store is not what is measured
        def write_batch(self, run_id, images, vectors) -> None:
            pass

    images, _ = scan(find_images(Path(data))[2], {})
    shas = {image.sha256 for image in images}
    jobs = []
    for name in BACKBONES:
        backbone = load_registry().backbone(name)
        model, resolved = build_model(backbone, "random", 0)
        jobs.append(pipeline.BackboneJob(backbone, EmbeddingSet(name, resolved.weights_id, backbone.dim),
                                         fold_batch_norm(model), shas))
    decoders = {"pool": decoded_batches, "tfdata": tfdata_batches}
    ignore = lambda *args: None  # noqa: E731
    pipeline.extract(images[:BATCH], jobs, Discard(), "warm-up", ignore, ignore)  # traces the graphs
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    cpu: dict[str, list[float]] = {name: [] for name in decoders}  # CPU seconds per image, every thread
    for round_ in range(rounds):
        for name in (list(decoders) if round_ % 2 == 0 else list(decoders)[::-1]):
            pipeline.decoded_batches = decoders[name]
            started, cpu_started = time.perf_counter(), time.process_time()
            pipeline.extract(images, jobs, Discard(), "bench", ignore, ignore)
            rates[name].append(len(images) / (time.perf_counter() - started))
            cpu[name].append((time.process_time() - cpu_started) / len(images))
    return {"rates": rates, "cpu_s_per_image": cpu}


def compare_decoders(work: Path, n: int, repeats: int) -> None:
    """The pool against tf.data, decoding alone and in `tk run`, interleaved ``repeats`` times."""
    import statistics

    if n <= 2 * BATCH:
        raise SystemExit(f"--decoders needs more than {2 * BATCH} images: the rate is measured after the first batch")
    data = make_dataset(work, n)
    arms = {"decode-pool": ("decode", "pool"), "decode-tfdata": ("decode", "tfdata"),
            "tk-pool": ("tk", "pool"), "tk-tfdata": ("tk", "tfdata")}
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm, (kind, decoder) in arms.items():
            if kind == "decode":
                results[arm].append(run_arm("decode", str(data), decoder))
                continue
            store = work / f"store-decoders-{arm}.duckdb"
            store.unlink(missing_ok=True)
            results[arm].append(run_arm("tk", str(data), str(store), "fp32", decoder))
    print(f"\n{n} images (700x460 PNG), median of {repeats} interleaved runs, each arm in its own process;")
    print("img/s after the first batch (for tk-*, its time includes tracing the three graphs), extract s in all")
    print(f"{'arm':>14} {'img/s':>7} {'extract s':>10} {'wall s':>7} {'peak MB':>8}   (every run: img/s, peak MB)")
    median = {}
    for arm, runs in results.items():
        rates = [r["steady_n"] / r["steady_s"] for r in runs]
        peak = statistics.median(r["peak_rss_mb"] for r in runs)
        median[arm] = (statistics.median(rates), peak)
        each = ", ".join(f"{rate:.2f}/{r['peak_rss_mb']:.0f}" for rate, r in zip(rates, runs))
        print(f"{arm:>14} {median[arm][0]:>7.2f} {statistics.median(r['extract_s'] for r in runs):>10.1f} "
              f"{statistics.median(r['wall_s'] for r in runs):>7.1f} {peak:>8.0f}   {each}")
    for kind in ("decode", "tk"):
        (new_rate, new_peak), (old_rate, old_peak) = median[f"{kind}-pool"], median[f"{kind}-tfdata"]
        print(f"{kind}: pool / tf.data  img/s {new_rate / old_rate:.2f}, peak RSS {new_peak / old_peak:.2f}")
    interleaved = run_arm("interleaved", str(data), str(2 * repeats))
    rates, cpu = interleaved["rates"], interleaved["cpu_s_per_image"]
    print(f"interleaved, {n} images per round: " + "; ".join(
        f"{name} {statistics.median(r):.2f} img/s (" + ", ".join(f"{x:.2f}" for x in r) + ")" for name, r in rates.items()))
    print("interleaved, CPU s per image (all threads): " + "; ".join(
        f"{name} {statistics.median(c):.3f} (" + ", ".join(f"{x:.3f}" for x in c) + ")" for name, c in cpu.items()))
    print(f"interleaved: pool / tf.data  img/s {statistics.median(rates['pool']) / statistics.median(rates['tfdata']):.2f} "
          "(medians; per round: " + ", ".join(f"{a / b:.2f}" for a, b in zip(rates["pool"], rates["tfdata"])) + ")")


def arm_seed(data: str, out: str) -> dict:
    import numpy as np
    from PIL import Image

    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    paths = sorted(Path(data).rglob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)), dtype=np.float32) for p in paths])
    for name in BACKBONES:
        backbone = load_registry().backbone(name)
        model, _ = build_model(backbone, "random", 0)
        features = model.predict(backbone.preprocess(images.copy()), batch_size=BATCH, verbose=0)
        np.save(Path(out) / f"{name}.npy", features)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=(200, 800), help="two dataset sizes (images)")
    parser.add_argument("--bound-batches", type=int, default=6)
    parser.add_argument("--precisions", nargs="*", default=[], choices=("bf16", "int8"),
                        help="also time `tk run --precision P` at the larger size")
    parser.add_argument("--breakhis-int8", action="store_true",
                        help=f"also time `tk run --precision int8` on {BREAKHIS_IMAGES} images (BreakHis's count), "
                             "converting its models and then with them cached")
    parser.add_argument("--decoders", type=int, metavar="N",
                        help="only compare the decoders (thread pool, tf.data) on N images")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of --decoders")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tk-bench")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.arm:
        arms = {"bound": lambda: arm_bound(int(args.rest[0])), "tk": lambda: arm_tk(*args.rest),
                "seed": lambda: arm_seed(*args.rest), "decode": lambda: arm_decode(*args.rest),
                "interleaved": lambda: arm_interleaved(args.rest[0], int(args.rest[1]))}
        print(json.dumps(arms[args.arm]()))
        return
    if args.decoders:
        compare_decoders(args.work, args.decoders, args.repeats)
        return

    small, large = args.sizes
    cache = args.work / "tk-cache"  # a fresh tk cache: the first int8 run must convert, as a new user's does
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TK_CACHE_DIR"] = str(cache)
    bound = run_arm("bound", str(args.bound_batches))
    rows = {}
    for n in (small, large):
        data = make_dataset(args.work, n)
        store = args.work / f"store-{n}.duckdb"
        store.unlink(missing_ok=True)
        out = args.work / f"seed-{n}"
        out.mkdir(exist_ok=True)
        rows[n] = {"tk": run_arm("tk", str(data), str(store)), "rerun": run_arm("tk", str(data), str(store)),
                   "seed": run_arm("seed", str(data), str(out))}
    for precision in args.precisions:
        # int8 converts and calibrates a TFLite model per backbone on the first run; the second run
        # (a fresh store again) finds it in the tk cache, as any later run on the same images does
        for arm in [f"tk-{precision}"] + ([f"tk-{precision}-cached"] if precision == "int8" else []):
            store = args.work / f"store-{large}-{arm}.duckdb"
            store.unlink(missing_ok=True)
            rows[large][arm] = run_arm("tk", str(make_dataset(args.work, large)), str(store), precision)

    breakhis = {}
    if args.breakhis_int8:
        data = make_breakhis_sized(args.work, make_dataset(args.work, large))
        os.environ["TK_CACHE_DIR"] = str(args.work / "tk-cache-breakhis")
        shutil.rmtree(os.environ["TK_CACHE_DIR"], ignore_errors=True)
        for arm in ("converting", "cached"):
            store = args.work / f"store-breakhis-int8-{arm}.duckdb"
            store.unlink(missing_ok=True)
            breakhis[arm] = run_arm("tk", str(data), str(store), "int8")

    print(f"\nper-backbone bound (images/s, batch {BATCH}): "
          + ", ".join(f"{k} {v:.1f}" for k, v in bound["rates"].items()))
    print(f"three-backbone bound: {bound['bound']:.2f} images/s")
    print("batch norms folded: " + ", ".join(f"{k} {v:.1f}" for k, v in bound["folded_rates"].items())
          + f"; three-backbone {bound['folded_bound']:.2f} images/s\n")
    print(f"{'images':>7} {'arm':>15} {'img/s':>7} {'wall s':>7} {'peak MB':>8}")
    for n, arms in rows.items():
        for arm, result in arms.items():
            print(f"{n:>7} {arm:>15} {n / result['wall_s']:>7.2f} {result['wall_s']:>7.1f} {result['peak_rss_mb']:>8.0f}")
    big = rows[large]
    tk_rate, seed_rate = large / big["tk"]["wall_s"], large / big["seed"]["wall_s"]
    slope = lambda arm: (rows[large][arm]["peak_rss_mb"] - rows[small][arm]["peak_rss_mb"]) / (large - small)  # noqa: E731
    print(f"\nratios at {large} images (goal in brackets):")
    print(f"  tk / bound       {tk_rate / bound['bound']:.2f}  (>= 0.9)")
    print(f"  tk / folded bound {tk_rate / bound['folded_bound']:.2f}")
    print(f"  tk / seed        {tk_rate / seed_rate:.2f}  (>= 1.5)")
    marginal = (large - small) / (big["tk"]["wall_s"] - rows[small]["tk"]["wall_s"])
    print(f"  marginal tk rate {marginal:.2f} images/s = {marginal / bound['bound']:.2f} x bound "
          f"(between the two sizes: the fixed start-up cost cancels)")
    for arm in [a for a in big if a.startswith("tk-")]:
        rate = large / big[arm]["wall_s"]
        print(f"  {arm:16s} / bound {rate / bound['bound']:.2f};  / seed {rate / seed_rate:.2f}")
    print(f"  re-run / first   {big['rerun']['wall_s'] / big['tk']['wall_s']:.3f}  (<= 0.05)")
    print(f"  RSS slope tk     {slope('tk'):.3f} MB/image  (<= 0.05)")
    print(f"  RSS slope seed   {slope('seed'):.3f} MB/image")
    for arm, result in breakhis.items():
        rate = BREAKHIS_IMAGES / result["wall_s"]
        print(f"  int8, {BREAKHIS_IMAGES} images, {arm:10s} {result['wall_s'] / 60:.1f} min  (cached: < 6 min), "
              f"{rate:.1f} images/s = {rate / bound['bound']:.2f} x bound, peak {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
