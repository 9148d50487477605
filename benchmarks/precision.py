"""Precision benchmark: images/s of one batch through the fp32 graph (as ``tk run`` extracts), the
bf16 model and the int8 LiteRT model, per backbone, in one process on the same images, with the
cosine of each against fp32.

    python benchmarks/precision.py [--backbones resnet50,efficientnetb0,densenet201] [--repeats 5]

Random weights (no download). Images are the demo's synthetic H&E-like tiles at BreakHis size
(700x460), resized as ``tk run`` resizes them; int8 is calibrated on 64 of them, and speed and
cosine are measured on 32 others. The arms are interleaved within each repeat, so that load from
other jobs on the machine falls on all of them alike; ratios are the median of per-repeat ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_tiles(folder: Path, n: int) -> list[str]:
    """``n`` BreakHis-sized synthetic tiles (PNG), generated once per folder."""
    from toolkit.ingest.demo import synthetic_tile
    from toolkit.ingest.sources import BREAKHIS_SUBTYPES

    folder.mkdir(parents=True, exist_ok=True)
    subtypes = sorted(BREAKHIS_SUBTYPES.values())
    paths = []
    for i in range(n):
        path = folder / f"tile-{i:04d}.png"
        if not path.exists():
            label, subtype = subtypes[i % len(subtypes)]
            synthetic_tile(np.random.default_rng(i), label == "malignant", subtype, (40, 100, 200, 400)[i % 4]).save(path)
        paths.append(str(path))
    return paths


def cosines(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """Plain cosine (min), centred cosine (mean, min) against ``reference``."""
    from toolkit.extract.parity import centred_cosine

    a, b = reference.astype(np.float64), other.astype(np.float64)
    plain = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    centred = centred_cosine(a, b)
    return float(plain.min()), float(centred.mean()), float(centred.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet50,efficientnetb0,densenet201")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per arm (interleaved)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tk-precision-bench")
    args = parser.parse_args()
    os.environ.setdefault("TK_CACHE_DIR", str(args.work / "cache"))  # converted int8 models are kept here

    from toolkit.extract.conversion import calibration_sample
    from toolkit.extract.folding import fold_batch_norm
    from toolkit.extract.pipeline import make_extractor
    from toolkit.extract.precision import N_CALIBRATION, int8_model, lite_extractor, mixed_model
    from toolkit.plugin.registry import load_registry
    from toolkit.extract.weights import build_model

    paths = make_tiles(args.work / "tiles", N_CALIBRATION + args.batch)
    registry = load_registry()
    print(f"{'backbone':<15}{'fp32 img/s':>11}{'bf16 img/s':>11}{'int8 img/s':>11}{'bf16/fp32':>10}{'int8/fp32':>10}"
          f"{'bf16 cos min':>13}{'bf16 ccos':>10}{'bf16 ccos min':>14}{'int8 cos min':>13}{'int8 ccos':>10}"
          f"{'int8 ccos min':>14}{'convert s':>10}")
    for name in args.backbones.split(","):
        backbone = registry.backbone(name)
        calibration, pixels = calibration_sample(paths, backbone.input_size, 0, N_CALIBRATION, args.batch)
        model, resolved = build_model(backbone, "random", 0)
        model = fold_batch_norm(model)  # as tk run does when it builds a model
        started = time.perf_counter()
        path, converted = int8_model(backbone, model, resolved, calibration)
        convert_s = time.perf_counter() - started if converted else float("nan")
        arms = {"fp32": make_extractor(backbone, model, args.batch),
                "bf16": make_extractor(backbone, mixed_model(model, "bf16"), args.batch),
                "int8": lite_extractor(path)}
        outputs = {arm: extract(pixels) for arm, extract in arms.items()}  # warm-up (graph tracing) + outputs
        seconds: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.repeats):
            for arm, extract in arms.items():
                started = time.perf_counter()
                extract(pixels)
                seconds[arm].append(time.perf_counter() - started)
        rate = {arm: args.batch / statistics.median(times) for arm, times in seconds.items()}
        ratio = {arm: statistics.median(f / t for f, t in zip(seconds["fp32"], seconds[arm])) for arm in ("bf16", "int8")}
        bf16 = cosines(outputs["fp32"], outputs["bf16"])
        int8 = cosines(outputs["fp32"], outputs["int8"])
        print(f"{name:<15}{rate['fp32']:>11.1f}{rate['bf16']:>11.1f}{rate['int8']:>11.1f}{ratio['bf16']:>10.2f}"
              f"{ratio['int8']:>10.2f}{bf16[0]:>13.5f}{bf16[1]:>10.4f}{bf16[2]:>14.4f}{int8[0]:>13.5f}{int8[1]:>10.4f}"
              f"{int8[2]:>14.4f}{convert_s:>10.0f}", flush=True)
        del arms, model
    print(f"\nbatch {args.batch}, {args.repeats} interleaved repeats, {os.cpu_count()} cores; cos: plain cosine, "
          "ccos: centred cosine (mean over the batch's images minus the fp32 mean); random weights.")


if __name__ == "__main__":
    main()
