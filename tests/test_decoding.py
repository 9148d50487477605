"""Decoding for extraction: pixel sources, the bounded pool that decodes them in order a fixed number
of batches ahead, and a run with only ONNX encoders, which never imports TensorFlow."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_tk_reporting_tensorflow
from tests.encoder_models import make_onnx
from toolkit.extract.batches import PREFETCH, decoded_batches
from toolkit.extract.pixels import Sizes
from toolkit.extract.stain import StainStep
from toolkit.ingest.images import UnreadableImage, resize_rgb

SIZES = [((16, 16), "stretch"), ((8, 12), "center-crop")]


class Region:
    """A region of an in-memory image: a pixel source that is not a file, as a slide reader's regions are."""

    def __init__(self, rgb: np.ndarray, x: int, y: int, size: int, delay: float = 0.0, problem: str | None = None,
                 started: list[int] | None = None) -> None:
        self.rgb, self.x, self.y, self.size = rgb, x, y, size
        self.delay, self.problem, self.started = delay, problem, started

    def pixels(self, sizes: Sizes, stain: StainStep | None = None) -> list[np.ndarray]:
        if self.started is not None:
            self.started.append(self.x)
        time.sleep(self.delay)
        if self.problem:
            raise UnreadableImage(self.problem)
        region = self.rgb[self.y:self.y + self.size, self.x:self.x + self.size]
        return [resize_rgb(region, size, rule) for size, rule in sizes]


@pytest.fixture
def slide() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 400, 3), dtype=np.uint8)


def test_batches_keep_their_order_and_report_unreadable_items_while_the_others_go_on(slide):
    """Later items finish first (shorter delays); the batches still come in order, and an unreadable
    item is left out of its batch's pixels with its reason."""
    regions = [Region(slide, 32 * i, 8, 40, delay=0.02 * (10 - i), problem="cannot decode" if i in (2, 7) else None)
               for i in range(10)]
    batches = list(decoded_batches(regions, SIZES, batch_size=4, threads=3))
    assert [b.items for b in batches] == [range(0, 4), range(4, 8), range(8, 10)]
    assert [b.readable for b in batches] == [[0, 1, 3], [4, 5, 6], [8, 9]]
    assert [b.unreadable for b in batches] == [{2: "cannot decode"}, {7: "cannot decode"}, {}]
    for batch in batches:
        for k, (size, rule) in enumerate(SIZES):
            expected = [resize_rgb(slide[8:48, 32 * i:32 * i + 40], size, rule) for i in batch.readable]
            assert batch.pixels[k].dtype == np.uint8 and batch.pixels[k].shape == (len(expected), *size, 3)
            np.testing.assert_array_equal(batch.pixels[k], np.stack(expected))


def test_a_batch_of_only_unreadable_items_has_empty_pixels(slide):
    [batch] = decoded_batches([Region(slide, 0, 0, 40, problem="gone")], SIZES, batch_size=2, threads=2)
    assert batch.readable == [] and batch.unreadable == {0: "gone"}
    assert [p.shape for p in batch.pixels] == [(0, 16, 16, 3), (0, 8, 12, 3)]


def test_at_most_prefetch_batches_are_decoded_ahead_of_the_one_held(slide):
    """Memory stays bounded: while the caller holds a batch, the pool decodes no more than PREFETCH
    batches after it, however many items remain."""
    started: list[int] = []
    batch_size = 4
    regions = [Region(slide, i, 0, 40, started=started) for i in range(batch_size * 10)]
    batches = decoded_batches(regions, SIZES, batch_size=batch_size, threads=4)
    for held in range(3):
        next(batches)
        time.sleep(0.3)  # time for the pool to run ahead, if it would
        assert len(started) == (held + 1 + PREFETCH) * batch_size
    batches.close()  # the caller stops early: what has not started is cancelled
    assert len(started) <= (3 + PREFETCH) * batch_size
    assert not [t for t in threading.enumerate() if t.name.startswith("tk-decode")]


def test_an_error_other_than_an_unreadable_image_stops_the_batches(slide):
    class Broken(Region):
        def pixels(self, sizes: Sizes, stain: StainStep | None = None) -> list[np.ndarray]:
            raise RuntimeError("a bug in a reader")

    with pytest.raises(RuntimeError, match="a bug in a reader"):
        list(decoded_batches([Region(slide, 0, 0, 40), Broken(slide, 0, 0, 40)], SIZES, batch_size=1, threads=2))


def test_a_run_with_only_onnx_encoders_never_imports_tensorflow(tmp_path, breakhis):
    """Scan, extraction, every default analysis and the html report, in a fresh interpreter."""
    pytest.importorskip("onnxruntime")
    from toolkit.cli import main

    with pytest.raises(SystemExit) as added:
        main(["encoders", "add", "enc", "--onnx", str(make_onnx(tmp_path / "enc.onnx"))])
    assert added.value.code == 0
    out = tmp_path / "reports"
    result = run_tk_reporting_tensorflow("run", breakhis, "--backbone", "enc", "--store", tmp_path / "tk.duckdb",
                                         "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "32 images, 0 skipped" in result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]).read_text().count("enc") > 1  # the report was rendered
    assert result.stderr.strip().splitlines()[-1] == "TENSORFLOW_NOT_IMPORTED"
