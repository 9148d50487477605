"""Time the statistics suite on 8,000 synthetic images and three backbones (no TensorFlow).

Run from the repository root:  .venv/bin/python benchmarks/stats_suite.py
Every built-in analysis runs on numpy embeddings of 2048, 1280 and 1920 features (ResNet50,
EfficientNetB0 and DenseNet201 sizes), per backbone and once across backbones, as ``tk run`` would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_stats_common import synthetic_embeddings, synthetic_metadata  # noqa: E402
from toolkit.plugin.types import AnalysisContext  # noqa: E402
from toolkit.plugin.registry import load_registry  # noqa: E402
from toolkit.plugin.results import SkipAnalysis, validate_results  # noqa: E402

BACKBONES = {"resnet50": 2048, "efficientnetb0": 1280, "densenet201": 1920}


def main() -> None:
    """Print seconds per analysis and backbone, and the total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--per-patient", type=int, default=100)
    args = parser.parse_args()
    metadata = synthetic_metadata(args.patients, args.per_patient)
    embeddings = {name: synthetic_embeddings(metadata, dim, signal=0.5, seed=i)
                  for i, (name, dim) in enumerate(BACKBONES.items())}
    con = duckdb.connect()
    print(f"{len(metadata)} images, {args.patients} patients, backbones {BACKBONES}", file=sys.stderr)
    totals: dict[str, float] = {}
    for analysis in load_registry().analyses.values():
        targets = [None] if analysis.needs.all_backbones else list(BACKBONES)
        for backbone in targets:
            context = AnalysisContext("bench", backbone, embeddings[backbone] if backbone else None,
                                      metadata.copy(), embeddings, con)
            started = time.perf_counter()
            try:
                validate_results(analysis.name, analysis.run(context))
            except SkipAnalysis as skipped:  # e.g. the Grad-CAM gallery needs image files and a network
                print(f"{analysis.name:12s} {backbone or 'all':15s} skipped: {skipped}")
                continue
            seconds = time.perf_counter() - started
            totals[analysis.name] = totals.get(analysis.name, 0.0) + seconds
            print(f"{analysis.name:12s} {backbone or 'all':15s} {seconds:7.2f} s")
    print(f"{'total':28s} {sum(totals.values()):7.2f} s")


if __name__ == "__main__":
    main()
