"""Every bad input gives one clear line naming the file and skips only that file."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from tests.bad_inputs import make_corpus
from tests.conftest import STAND_IN, tk
from toolkit.errors import TkError


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "data"
    cases = make_corpus(root)
    store = root.parent / "tk.duckdb"
    result = tk("run", root, "--backbone", "stand_in", "--weights", "random", "--store", store,
                "--analysis", "none", "--export", "none", "--plugin", STAND_IN)
    return cases, result, store


def test_bad_inputs_each_named_once_and_skipped_alone(corpus_run):
    cases, result, store = corpus_run
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "skipped" in line]
    skipped = {kind: rel for kind, (rel, outcome) in cases.items() if outcome == "skipped"}
    for kind, rel in skipped.items():
        assert sum(rel in line for line in warnings) == 1, f"{kind}: {rel} not named exactly once"
    assert len(warnings) == len(skipped)
    con = duckdb.connect(str(store), read_only=True)
    stored = {r[0] for r in con.execute("SELECT relpath FROM images").fetchall()}
    expected = {rel for rel, outcome in cases.values() if outcome == "embedded"}
    assert stored == expected
    assert con.execute("SELECT count(DISTINCT sha256) FROM embeddings_stand_in").fetchall() == [(len(expected) - 1,)]
    assert f"{len(expected)} images, {len(skipped)} skipped" in result.stderr


def test_pixel_limit_refuses_before_decoding(corpus_run):
    cases, result, _ = corpus_run
    bomb = next(line for line in result.stderr.splitlines() if cases["decompression bomb"][0] in line)
    assert "pixel" in bomb and "limit" in bomb or "decompression-bomb" in bomb


def test_a_file_replaced_after_scanning_is_not_embedded_under_the_old_hash(tmp_path):
    """The pipeline decodes only bytes that hash to the scanned sha256 (issue #20, item 4)."""
    from tests.datasets import tile
    from toolkit.extract.batches import decoded_batches
    from toolkit.extract.pixels import pixel_source
    from toolkit.ingest.scan import scan
    from toolkit.ingest.sources import ImageRecord

    rng = np.random.default_rng(0)
    path = tmp_path / "benign" / "a.png"
    path.parent.mkdir()
    tile(rng, False).save(path)
    scanned, _ = scan([ImageRecord(path, "benign/a.png", "folders", "benign")], {})
    tile(rng, True).save(path)  # replaced between scanning and reading
    [batch] = decoded_batches([pixel_source(image) for image in scanned], [((32, 32), "stretch")], batch_size=1,
                              threads=1)
    assert batch.readable == [] and batch.pixels[0].shape == (0, 32, 32, 3)
    assert batch.unreadable == {0: "changed since it was scanned; run again"}


def test_training_and_int8_calibration_decode_only_the_bytes_that_were_hashed(tmp_path, monkeypatch, capsys):
    """``tk train`` and the int8 calibration sample read files again after scanning; a file replaced
    in between was decoded under the old hash (issue #20, limits). Both now use ``read_verified``."""
    from tests.datasets import make_breakhis, tile
    from toolkit.extract.conversion import calibration_sample
    from toolkit.ingest import scan as scan_module
    from toolkit.models.training import TrainSettings
    from toolkit.models.training_data import load_training_data

    root = tmp_path / "data"
    paths = sorted(make_breakhis(root, patients=1, magnifications=(40,), per_magnification=2))
    replaced = paths[0]
    real_scan = scan_module.scan

    def scan_then_replace(records, known, threads=4):
        scanned = real_scan(records, known, threads)
        tile(np.random.default_rng(9), True).save(replaced)  # replaced between scanning and decoding
        return scanned

    monkeypatch.setattr(scan_module, "scan", scan_then_replace)
    data = load_training_data(TrainSettings(data=root), (32, 32))
    assert len(data.pixels) == len(data.y) == len(data.patients) == len(paths) - 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "changed since" in line]
    assert line.endswith(f"{replaced.name}: changed since it was scanned; run again — skipped")
    contents = [(str(p), "0" * 64) for p in paths[:3]]  # none hashes to the recorded sha256
    with pytest.raises(TkError, match="no readable image to calibrate"):
        calibration_sample(contents, (32, 32), 0, 2, 1)


def test_control_characters_in_file_names_never_reach_the_terminal(tmp_path):
    """ANSI/OSC sequences and newlines in names are escaped; each warning stays one line (issue #20, item 6)."""
    from tests.datasets import tile

    root = tmp_path / "data"
    (root / "benign").mkdir(parents=True)
    tile(np.random.default_rng(0), False).save(root / "benign" / "good.png")
    (root / "benign" / "bad\x1b[2J.png").write_text("not an image")
    (root / "benign" / "title\x1b]0;pwned\x07.png").write_text("not an image")
    (root / "benign" / "new\nline.png").write_bytes(b"")
    result = tk("run", root, "--backbone", "stand_in", "--weights", "random", "--store", tmp_path / "tk.duckdb",
                "--analysis", "none", "--export", "none", "--plugin", STAND_IN)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("benign/bad\\x1b[2J.png: not an image file" in line for line in warnings), warnings
    assert any("benign/title\\x1b]0;pwned\\x07.png" in line for line in warnings), warnings
    assert any("benign/new\\x0aline.png: empty file" in line for line in warnings), warnings


def test_a_non_utf8_file_name_is_skipped_with_one_line_and_the_run_finishes(tmp_path):
    """Names that are not UTF-8 (latin-1 bytes) are skipped, escaped, on every run (issue #20, item 10)."""
    import os

    from tests.datasets import tile

    root = tmp_path / "data"
    (root / "benign").mkdir(parents=True)
    tile(np.random.default_rng(0), False).save(root / "benign" / "good.png")
    tile(np.random.default_rng(1), False).save(os.fsdecode(bytes(root / "benign") + b"/caf\xe9.png"))
    open(os.fsdecode(bytes(root / "benign") + b"/empty\xff.png"), "wb").close()
    store = tmp_path / "tk.duckdb"
    for _ in range(2):  # the re-run, too
        result = tk("run", root, "--backbone", "stand_in", "--weights", "random", "--store", store,
                    "--analysis", "none", "--export", "none", "--plugin", STAND_IN)
        assert result.exit_code == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert sorted(warnings) == [f"warning: benign/{name}: file name is not valid UTF-8; rename it "
                                    "(e.g. convmv -f latin1 -t utf8) — skipped" for name in ("caf\\xe9.png", "empty\\xff.png")]
    con = duckdb.connect(str(store), read_only=True)
    assert {r[0] for r in con.execute("SELECT status FROM runs").fetchall()} == {"ok"}
    assert con.execute("SELECT relpath FROM images").fetchall() == [("benign/good.png",)]


def test_exif_orientation_is_applied_as_every_viewer_shows_it(tmp_path):
    """A phone JPEG with orientation 6 is embedded upright, not turned 90 degrees (issue #20, item 12)."""
    from PIL import Image, ImageOps

    from toolkit.ingest.images import load_rgb, read_size

    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, 32:] = 255  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), np.int16)
    assert shown.shape == (64, 48, 3)
    assert read_size(path) == (48, 64)
    embedded = load_rgb(path, (64, 48)).astype(np.int16)
    assert np.abs(embedded - shown).mean() < 2
    assert load_rgb(path.read_bytes(), (64, 48)).tolist() == embedded.tolist()


def test_an_all_nan_float_image_is_skipped_not_embedded_as_black(tmp_path):
    """A float TIFF without one finite pixel is refused with a reason, and warns nothing (issue #20, item 14)."""
    import warnings

    from PIL import Image

    from toolkit.ingest.images import UnreadableImage, load_rgb

    path = tmp_path / "empty.tif"
    Image.fromarray(np.full((48, 64), np.nan, np.float32), mode="F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnreadableImage, match="every pixel is NaN or infinite"):
            load_rgb(path, (48, 64))
        partly = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
        partly[:, :8] = np.nan
        Image.fromarray(partly, mode="F").save(path)
        assert load_rgb(path, (48, 64))[:, 8:].max() == 255
