"""Extraction on a GPU machine without TensorFlow: the model-alone bound of tk's backbones in fp32,
bf16 and fp16, the parity of their embeddings with fp32, and how fast tk's decoder can feed them.

The GPU machines this project is lent have JAX but no TensorFlow, and no package registry to
install it from (its CUDA wheels are gigabytes), so ``benchmarks/extract.py`` cannot run there.
This script measures what can be measured there, with tk's own code wherever it is backend-neutral:

  bound   each backbone as ``tk run`` prepares it (built by tk's plugin, batch norms folded by
          ``toolkit.extract.folding``, lowered by ``toolkit.extract.precision.mixed_model``), run by Keras' JAX
          backend as one jitted function from a uint8 batch to float32 embeddings, the host-to-device
          copy of the batch and the copy of the embeddings back included; images/s per batch size,
          and the three-backbone bound 1 / sum(1 / rate_b). Random weights (no download).
  parity  centred cosine of the bf16 and fp16 embeddings against fp32, on the same tiles.
  decode  images/s of ``toolkit.ingest.images.load_rgb`` (the decoder ``tk run`` calls in its decode
          threads) on BreakHis-sized PNGs with 1..N threads: the most images per second that tk's
          pipeline can feed to any backend, hence the ceiling of tk / bound on that machine; and,
          for comparison, with 1..N processes.

    KERAS_BACKEND=jax python benchmarks/gpu.py [--batches 32 128] [--json results.json]

The arms of one backbone and batch size are interleaved round by round, so that noise falls on all
of them alike. Compilation is timed apart and excluded from images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from extract import BACKBONES, make_dataset  # benchmarks/extract.py: same backbones, same tiles

PRECISIONS = ("fp32", "bf16", "fp16")


def tk_backbones() -> dict[str, Any]:
    """tk's built-in backbones, registered through their own plugin hooks (no TensorFlow needed)."""
    import importlib

    found: dict[str, Any] = {}
    for name in BACKBONES:
        module = importlib.import_module(f"toolkit.plugins.backbones.{name}")
        module.register_backbones(lambda backbone: found.setdefault(backbone.name, backbone))
    return found


def prepared_models(backbone: Any, seed: int) -> dict[str, Any]:
    """The fp32 model as ``tk run`` prepares it (folded) and its bf16 and fp16 lowerings, same weights."""
    import keras

    from toolkit.extract.folding import fold_batch_norm
    from toolkit.extract.precision import mixed_model

    keras.utils.set_random_seed(seed)
    fp32 = fold_batch_norm(backbone.build(None))
    return {"fp32": fp32, **{p: mixed_model(fp32, p) for p in PRECISIONS if p != "fp32"}}


def jitted_extractor(backbone: Any, model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch (host) -> float32 embeddings (host) through one jitted JAX function."""
    import jax
    import keras

    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable: list, fixed: list, batch: Any) -> Any:
        pixels = backbone.preprocess(keras.ops.cast(batch, "float32"))
        embeddings, _ = model.stateless_call(trainable, fixed, pixels, training=False)
        return keras.ops.cast(embeddings, "float32")

    return lambda batch: np.asarray(forward(trainable, fixed, batch))


def measure_backbone(name: str, backbone: Any, batch_sizes: list[int], rounds: int, calls: int,
                     tiles: np.ndarray) -> dict:
    """images/s per precision and batch size, compile seconds, and parity against fp32 on ``tiles``."""
    from toolkit.extract.parity import embedding_parity

    started = time.perf_counter()
    models = prepared_models(backbone, seed=0)
    result: dict = {"prepare_s": time.perf_counter() - started, "rates": {}, "compile_s": {}, "parity": {}}
    rng = np.random.default_rng(0)
    for size in batch_sizes:
        batch = rng.integers(0, 255, (size, *backbone.input_size, 3), dtype=np.uint8)
        extractors = {p: jitted_extractor(backbone, m) for p, m in models.items()}
        for precision, extract in extractors.items():
            began = time.perf_counter()
            extract(batch)
            result["compile_s"][f"{precision}@{size}"] = time.perf_counter() - began
            extract(batch)  # one warm call after compilation
        seconds = dict.fromkeys(extractors, 0.0)
        for _ in range(rounds):
            for precision, extract in extractors.items():
                began = time.perf_counter()
                for _ in range(calls):
                    extract(batch)
                seconds[precision] += time.perf_counter() - began
        result["rates"][size] = {p: rounds * calls * size / s for p, s in seconds.items()}
        print(f"  {name} batch {size}: " + ", ".join(f"{p} {r:.0f} img/s" for p, r in result["rates"][size].items()),
              flush=True)
        if size == batch_sizes[0]:
            embedded = {p: np.concatenate([extract(tiles[i:i + size]) for i in range(0, len(tiles), size)])
                        for p, extract in extractors.items()}
            for precision in PRECISIONS[1:]:  # the same measures tk records for a lowered run
                result["parity"][precision] = {**embedding_parity(embedded["fp32"], embedded[precision]),
                                               "nonfinite": int((~np.isfinite(embedded[precision])).sum())}
    return result


def decode_rates(paths: list[str], size: tuple[int, int], counts: list[int], processes: bool = False) -> dict[int, float]:
    """images/s of tk's decoder over ``paths`` with each count of threads (as ``tk run`` decodes) or
    of processes (arrays pickled back, pool start-up excluded); files already in the page cache."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from itertools import repeat

    from toolkit.ingest.images import load_rgb

    for path in paths:
        Path(path).read_bytes()
    rates = {}
    for count in counts:
        pool = (ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) if processes
                else ThreadPoolExecutor(count))
        with pool:
            list(pool.map(load_rgb, paths[:count], repeat(size)))  # start every worker first
            began = time.perf_counter()
            list(pool.map(load_rgb, paths, repeat(size), chunksize=4 if processes else 1))
            rates[count] = len(paths) / (time.perf_counter() - began)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="batch sizes (the first is the goals' bound)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    parser.add_argument("--calls", type=int, default=4, help="timed calls per arm and round")
    parser.add_argument("--tiles", type=int, default=256, help="BreakHis-sized PNGs to decode")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tk-gpu-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import jax
    import keras

    cores = os.cpu_count() or 1
    devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
    print(f"keras {keras.__version__} ({keras.backend.backend()}), jax {jax.__version__}, devices {devices}, "
          f"{cores} CPU cores", flush=True)
    folder = make_dataset(args.work, args.tiles)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    threads = sorted({t for t in (1, 2, 4, 8, 16, cores) if t <= cores})
    results: dict = {"devices": devices, "cores": cores, "keras": keras.__version__, "jax": jax.__version__,
                     "backbones": {}}
    for kind in ("threads", "processes"):
        rates = results[f"decode_{kind}"] = decode_rates(paths, (224, 224), threads, processes=kind == "processes")
        print(f"decode (tk's load_rgb, 700x460 PNG -> 224x224), {kind}: "
              + ", ".join(f"{n}: {r:.0f}" for n, r in rates.items()) + " img/s", flush=True)

    from toolkit.ingest.images import load_rgb

    tiles = np.stack([load_rgb(p, (224, 224)) for p in paths[:2 * args.batches[0]]])
    for name, backbone in tk_backbones().items():
        results["backbones"][name] = measure_backbone(name, backbone, args.batches, args.rounds, args.calls, tiles)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    report(results, args.batches)


def report(results: dict, batch_sizes: list[int]) -> None:
    """Print the tables: per-backbone rates, three-backbone bounds, parity and the decode ceiling."""
    backbones = results["backbones"]
    print(f"\n{'backbone':<15}{'batch':>6}" + "".join(f"{p + ' img/s':>12}" for p in PRECISIONS)
          + f"{'bf16/fp32':>10}{'fp16/fp32':>10}{'compile s':>10}")
    for name, result in backbones.items():
        for size in batch_sizes:
            rates = result["rates"][size]
            compile_s = sum(v for k, v in result["compile_s"].items() if k.endswith(f"@{size}"))
            print(f"{name:<15}{size:>6}" + "".join(f"{rates[p]:>12.0f}" for p in PRECISIONS)
                  + f"{rates['bf16'] / rates['fp32']:>10.2f}{rates['fp16'] / rates['fp32']:>10.2f}{compile_s:>10.1f}")
    decode = max(results["decode_threads"].values())
    print(f"\nthree-backbone bound (images/s) and decode ceiling (tk's threads, {decode:.0f} img/s) / bound:")
    for size in batch_sizes:
        for precision in PRECISIONS:
            bound = 1 / sum(1 / r["rates"][size][precision] for r in backbones.values())
            print(f"  batch {size:>4} {precision}: {bound:8.0f}   decode / bound {decode / bound:5.2f}")
    print("\nparity against fp32 (random weights, centred cosine mean / min, non-finite values):")
    for name, result in backbones.items():
        print(f"  {name:<15}" + "   ".join(f"{p} {v['centred_cosine_mean']:.4f} / {v['centred_cosine_min']:.4f} / {v['nonfinite']}"
                                         for p, v in result["parity"].items()))


if __name__ == "__main__":
    main()
