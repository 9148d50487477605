"""Export benchmark: for each real backbone (random weights), Keras fp32 against every TFLite
variant: size ratio, latency ratios (one image and a batch of 32, 2 threads) and parity.

    python benchmarks/export.py [--images 96] [--backbones resnet50,efficientnetb0,densenet201]

It embeds a generated BreakHis-style dataset, exports every variant with `tk export` (which measures
and stores parity in `export_parity`) and prints the table from the store.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

FORMATS = "tflite,tflite-fp16,tflite-dynamic,tflite-int8"


def tk(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "toolkit", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="images in the generated dataset")
    parser.add_argument("--backbones", default="resnet50,efficientnetb0,densenet201")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tk-export-bench")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from extract import make_dataset

    data = make_dataset(args.work, args.images)
    store = args.work / "export.duckdb"
    store.unlink(missing_ok=True)
    tk("run", str(data), "--backbone", args.backbones, "--weights", "random", "--store", str(store),
       "--analysis", "none", "--export", "none")
    for backbone in args.backbones.split(","):
        tk("export", "--backbone", backbone, "--format", FORMATS, "--store", str(store), "--out", str(args.work / "out"))

    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute("""
        SELECT backbone, format, size_bytes, latency_single_ms, latency_batch32_ms, keras_latency_single_ms,
               keras_latency_batch32_ms, centred_cosine_mean, centred_cosine_min, similarity_rank_corr,
               prediction_agreement
        FROM export_parity ORDER BY backbone, format""").fetchall()
    keras_bytes = {b: s for b, f, s, *_ in rows if f == "tflite"}  # fp32 weights: the Keras model's size
    fp32_single = {b: l for b, f, _, l, *_ in rows if f == "tflite"}
    print(f"{'backbone':<15}{'format':<16}{'MB':>7}{'size/fp32':>10}{'1-img ms':>9}{'Keras/x 1':>10}"
          f"{'fp32/x 1':>9}{'32-img ms':>10}{'Keras/x 32':>11}{'cos mean':>9}{'cos min':>9}{'rank r':>8}{'agree':>7}")
    for b, f, size, single, batch, k_single, k_batch, cos_mean, cos_min, rank, agree in rows:
        print(f"{b:<15}{f:<16}{size / 1e6:>7.1f}{size / keras_bytes[b]:>10.2f}{single:>9.1f}{k_single / single:>10.2f}"
              f"{fp32_single[b] / single:>9.2f}{batch:>10.0f}{k_batch / batch:>11.2f}{cos_mean:>9.4f}{cos_min:>9.4f}"
              f"{rank:>8.4f}{agree:>7.0%}")
    print("\nKeras/x: how many times faster than the Keras fp32 model; fp32/x: than TFLite fp32; "
          "size/fp32: size relative to the fp32 TFLite file (the Keras weights' size).")


if __name__ == "__main__":
    main()
