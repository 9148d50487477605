"""Image sources: BreakHis names and tree, class folders, CSV manifests, odd folders."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.datasets import make_breakhis, tile
from toolkit.errors import TkError
from toolkit.ingest.sources import BREAKHIS_SUBTYPES, detect_source, find_images, parse_breakhis_name


@pytest.mark.parametrize("name, expected", [
    ("SOB_M_DC-14-2523-400-002.png", ("malignant", "ductal_carcinoma", "14-2523", 400, 2)),
    ("SOB_B_A-14-22549AB-40-001.png", ("benign", "adenosis", "14-22549AB", 40, 1)),
    ("SOB_B_PT-14-21998AB-100-005.png", ("benign", "phyllodes_tumor", "14-21998AB", 100, 5)),
    ("SOB_M_LC-14-13412-200-030.png", ("malignant", "lobular_carcinoma", "14-13412", 200, 30)),
])
def test_breakhis_names(name, expected):
    meta = parse_breakhis_name(name)
    assert (meta["label"], meta["subtype"], meta["patient_id"], meta["magnification"], meta["seq"]) == expected


@pytest.mark.parametrize("name", [
    "SOB_B_DC-14-2523-400-002.png",   # benign class letter with a malignant subtype
    "SOB_M_XX-14-2523-400-002.png",   # unknown subtype
    "SOB_M_DC-14-2523-300-002.png",   # no such magnification
    "SOB_M_DC-14-2523-400.png",       # no sequence number
    "IMG_0001.png",
])
def test_not_breakhis_names(name):
    assert parse_breakhis_name(name) is None


@given(code=st.sampled_from(sorted(BREAKHIS_SUBTYPES)), year=st.integers(0, 99),
       slide=st.from_regex(r"\A[0-9]{1,6}[A-Z]{0,2}\Z"), mag=st.sampled_from([40, 100, 200, 400]),
       seq=st.integers(0, 999))
def test_breakhis_name_round_trip(code, year, slide, mag, seq):
    label, subtype = BREAKHIS_SUBTYPES[code]
    cls = "B" if label == "benign" else "M"
    meta = parse_breakhis_name(f"SOB_{cls}_{code}-{year:02d}-{slide}-{mag}-{seq:03d}.png")
    assert meta == {"label": label, "subtype": subtype, "patient_id": f"{year:02d}-{slide}",
                    "magnification": mag, "seq": seq}


def test_breakhis_tree_skips_unparseable_names(tmp_path):
    root = tmp_path / "breast"
    make_breakhis(root, patients=1, magnifications=(40,), per_magnification=1)
    odd = root / "benign" / "SOB" / "adenosis" / "scan 1.png"
    tile(__import__("numpy").random.default_rng(0), False).save(odd)
    kind, found_root, records, skipped = find_images(root)
    assert kind == "breakhis" and found_root == root.resolve()
    assert len(records) == 4
    assert [s.relpath for s in skipped] == ["benign/SOB/adenosis/scan 1.png"]
    assert "BreakHis" in skipped[0].reason


def test_class_folders(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    for label in ("benign", "malignant"):
        (tmp_path / label / "sub").mkdir(parents=True)
        tile(rng, label == "malignant").save(tmp_path / label / "sub" / "a.png")
        tile(rng, label == "malignant").save(tmp_path / label / "b.jpg")
    tile(rng, False).save(tmp_path / "stray.png")
    kind, _, records, skipped = find_images(tmp_path)
    assert kind == "folders"
    assert sorted((r.relpath, r.label) for r in records) == [
        ("benign/b.jpg", "benign"), ("benign/sub/a.png", "benign"),
        ("malignant/b.jpg", "malignant"), ("malignant/sub/a.png", "malignant")]
    assert [s.relpath for s in skipped] == ["stray.png"]


def test_patient_from_takes_the_first_group_or_the_whole_match_of_the_path(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    for relpath in ("benign/patient_7/a.png", "benign/patient_7/b.png", "malignant/patient_12/a.png",
                    "malignant/loose.png"):
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        tile(rng, False).save(tmp_path / relpath)
    _, _, records, _ = find_images(tmp_path, patient_from=r"patient_(\d+)")
    assert {r.relpath: r.patient_id for r in records} == {
        "benign/patient_7/a.png": "7", "benign/patient_7/b.png": "7", "malignant/patient_12/a.png": "12",
        "malignant/loose.png": None}
    _, _, records, _ = find_images(tmp_path, patient_from=r"patient_\d+")
    assert records[0].patient_id == "patient_7"


def test_patient_from_with_an_invalid_regex_is_one_clear_line(tmp_path):
    with pytest.raises(TkError, match=r"--patient-from 'patient_\(' is not a valid regular expression") as raised:
        find_images(tmp_path, patient_from="patient_(")
    assert "\n" not in str(raised.value)


def test_manifest(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    (tmp_path / "img").mkdir()
    tile(rng, False).save(tmp_path / "img" / "x.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id,magnification\nimg/x.png,benign,p1,40X\nimg/gone.png,benign,p2,40\n")
    kind, root, records, skipped = find_images(manifest)
    assert kind == "manifest" and root == tmp_path.resolve()
    assert [(r.relpath, r.label, r.patient_id, r.magnification) for r in records] == [("img/x.png", "benign", "p1", 40)]
    assert skipped[0].relpath == "m.csv:3" and "img/gone.png does not exist" in skipped[0].reason


def test_a_manifest_row_with_an_impossible_path_is_skipped_with_its_line(tmp_path):
    """A symlink loop, a 300-character name and a NUL byte skip their row only (issue #20, item 11)."""
    tile(__import__("numpy").random.default_rng(0), False).save(tmp_path / "x.png")
    os.symlink("loop", tmp_path / "loop")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\nloop/a.png,benign\n{'a' * 300}.png,benign\nx\0.png,benign\nx.png,benign\n")
    _, _, records, skipped = find_images(manifest)
    assert [r.relpath for r in records] == ["x.png"]
    reasons = {s.relpath: s.reason for s in skipped}
    assert list(reasons) == ["m.csv:2", "m.csv:3", "m.csv:4"]
    assert "symlink loop" in reasons["m.csv:2"] or "does not exist" in reasons["m.csv:2"]
    assert "File name too long" in reasons["m.csv:3"]
    assert "null byte" in reasons["m.csv:4"] and "\0" not in reasons["m.csv:4"]
    assert all("fix the path" in reason for reason in reasons.values())


def test_manifest_missing_columns_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.png,benign\n")
    with pytest.raises(TkError, match=r"m.csv: manifest lacks column\(s\) path, label"):
        find_images(manifest)


def test_symlink_loop_is_walked_once(tmp_path):
    root = tmp_path / "data"
    make_breakhis(root, patients=1, magnifications=(40,), per_magnification=1)
    os.symlink(root, root / "benign" / "loop")
    _, _, records, _ = find_images(root)
    assert len(records) == 4


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TkError, match="no images found"):
        find_images(tmp_path)
    assert detect_source(tmp_path) == "folders"


def test_manifest_in_another_encoding_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\nimg/é.png,bénin\n".encode("latin-1"))
    with pytest.raises(TkError, match=r"m.csv: not UTF-8 text .*save the manifest as UTF-8"):
        find_images(manifest)


text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda s: s.strip() == s)


@given(rows=st.lists(st.tuples(text, text, st.one_of(st.none(), st.sampled_from([40, 100, 200, 400]))),
                     min_size=1, max_size=6))
def test_manifest_reader_round_trips_any_text(tmp_path_factory, rows):
    import csv

    folder = tmp_path_factory.mktemp("manifest")
    (folder / "a.png").write_bytes(b"")  # existence is all the reader checks
    manifest = folder / "m.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "magnification"])
        for label, patient, magnification in rows:
            writer.writerow(["a.png", label, patient, "" if magnification is None else f"{magnification}X"])
    _, _, records, skipped = find_images(manifest)
    assert skipped == []
    assert [(r.label, r.patient_id, r.magnification) for r in records] == rows
