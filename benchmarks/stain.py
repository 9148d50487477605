"""What stain normalisation costs per image, beside what decoding costs, on the bundled demo.

For every demo image (192 PNGs of 700 x 460) and each arm, in one process and one thread (as one
decode thread does it): read the file, decode it, normalise it (the arm's method, at the
image's own size, as tk does) and resize it to 224 x 224. Arms are interleaved over ``--repeats``
rounds so machine noise hits them alike; the table prints the median milliseconds per image and the
share of images each method left unchanged.

    python benchmarks/stain.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.extract.stain import decode, prepare  # noqa: E402
from toolkit.ingest.demo import demo_dataset  # noqa: E402
from toolkit.plugin.registry import load_registry  # noqa: E402

ARMS = ("none", "macenko", "reinhard")
SIZE = (224, 224)


def time_arm(paths: list[Path], method: str) -> tuple[float, int]:
    """Milliseconds per image to read, decode, normalise and resize every path; images left unchanged."""
    step = prepare(method, None, load_registry())
    started = time.perf_counter()
    for path in paths:
        decode(path.read_bytes(), [SIZE], step)
    return 1000 * (time.perf_counter() - started) / len(paths), step.n_unchanged if step else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(demo_dataset().rglob("*.png"))
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    unchanged: dict[str, int] = {}
    for _ in range(args.repeats):
        for arm in ARMS:
            ms, unchanged[arm] = time_arm(paths, arm)
            times[arm].append(ms)
    base = statistics.median(times["none"])
    print(f"{len(paths)} demo images, {args.repeats} rounds; ms per image (median): read + decode + "
          f"[normalise] + resize to {SIZE[0]}x{SIZE[1]}")
    print(f"{'arm':<10} {'ms/image':>9} {'normalise':>10} {'unchanged':>10}")
    for arm in ARMS:
        ms = statistics.median(times[arm])
        extra = "" if arm == "none" else f"{ms - base:+.1f}"
        print(f"{arm:<10} {ms:9.1f} {extra:>10} {unchanged[arm]:>6}/{len(paths)}")


if __name__ == "__main__":
    main()
