"""Encoders loaded from local files (ONNX, Keras-Hub, SavedModel): registration with `tk encoders add`,
embeddings equal to the same file run directly, embedding sets keyed by file and spec, and the
capabilities that need a Keras model refusing the ONNX kind in one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.conftest import TINY, Result, tk
from tests.encoder_models import SIZE, make_dinov2, make_onnx, make_savedmodel

FAST_ANALYSES = "pca"


def run(data: Path, store: Path, backbones: str, *extra: str) -> Result:
    return tk("run", data, "--backbone", backbones, "--store", store, "--out", store.parent / "reports",
              "--analysis", FAST_ANALYSES, "--export", "none", *extra)


def stored(store: Path, backbone: str) -> dict[str, dict[str, np.ndarray]]:
    """{table: {sha256: vector}} of every embedding set of ``backbone``."""
    with duckdb.connect(str(store), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM embedding_sets WHERE backbone = ? "
                                            "ORDER BY created_at", [backbone]).fetchall()]
        return {t: {sha: np.asarray(v, np.float32) for sha, v in con.execute(f"SELECT sha256, vector FROM {t}").fetchall()}
                for t in tables}


def pixels_by_sha(data: Path, resize: str = "stretch") -> dict[str, np.ndarray]:
    """Every image of ``data`` decoded as tk decodes it, by content sha256."""
    from toolkit.ingest.images import load_rgb

    return {hashlib.sha256(p.read_bytes()).hexdigest(): load_rgb(p, (SIZE, SIZE), resize)
            for p in sorted(data.rglob("*.png"))}


def normalised(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def assert_same_embeddings(vectors: dict[str, np.ndarray], direct: dict[str, np.ndarray]) -> None:
    assert set(vectors) == set(direct)
    for sha, vector in vectors.items():
        reference = direct[sha]
        cosine = float(vector @ reference / (np.linalg.norm(vector) * np.linalg.norm(reference)))
        assert cosine >= 0.9999, (sha, cosine)
        np.testing.assert_allclose(vector, reference, rtol=1e-4, atol=1e-5)


# -- specs -------------------------------------------------------------------------------------------

def test_spec_round_trip_and_fingerprint(tmp_path):
    from toolkit.plugins.backbones.encoders.spec import EncoderSpec, encoders_dir, read_spec, write_spec

    spec = EncoderSpec(name="uni2h", kind="onnx", path=str(tmp_path / "model.onnx"), input_size=224,
                       resize="center-crop", layout="nchw", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       pooling="cls", prefix_tokens=9, dim=1536, preset="uni2-h", licence='CC "BY" NC', source="u")
    path = write_spec(spec)
    assert path == encoders_dir() / "uni2h.toml"
    assert read_spec(path) == spec
    moved = EncoderSpec(**{**spec.__dict__, "path": "/media/usb/model.onnx"})
    assert moved.fingerprint == spec.fingerprint  # the file's bytes identify it, not where it is mounted
    for change in ({"mean": (0.5, 0.5, 0.5)}, {"pooling": "mean"}, {"input_size": 256}, {"resize": "stretch"}):
        assert EncoderSpec(**{**spec.__dict__, **change}).fingerprint != spec.fingerprint, change


def test_invalid_spec_is_skipped_with_a_warning_and_listed(capsys):
    from toolkit.plugin.registry import _cache, load_registry
    from toolkit.plugins.backbones.encoders.spec import encoders_dir

    _cache.clear()
    encoders_dir().mkdir(parents=True)
    (encoders_dir() / "broken.toml").write_text('name = "broken"\nkind = "pytorch"\npath = "/x"\ndim = 3\n')
    registry = load_registry()
    assert "broken" not in registry.backbones and "resnet50" in registry.backbones
    assert "kind 'pytorch' is not one of onnx, keras-hub, savedmodel" in capsys.readouterr().err
    code, out, _ = tk("encoders", "list", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["name"] == "broken" and "broken.toml" in row["error"]


def test_folder_weights_hash_every_visible_file(tmp_path):
    from toolkit.ingest.scan import sha256_path

    folder = tmp_path / "preset"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    first = sha256_path(folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "meta").write_text("hub bookkeeping")
    assert sha256_path(folder) == first
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert sha256_path(folder) != first


def test_center_crop_cuts_the_middle_before_resizing(tmp_path):
    from PIL import Image

    from toolkit.ingest.images import load_rgb

    array = np.zeros((40, 80, 3), np.uint8)
    array[:, 20:60] = 200  # the centred 40x40 square is bright, the sides dark
    Image.fromarray(array).save(tmp_path / "wide.png")
    cropped = load_rgb(tmp_path / "wide.png", (20, 20), "center-crop")
    stretched = load_rgb(tmp_path / "wide.png", (20, 20))
    assert cropped.min() == 200  # only the bright middle is left
    assert stretched[:, 0].max() == 0 and stretched[:, 10].min() == 200


# -- tk encoders add ---------------------------------------------------------------------------------

def test_add_reads_size_and_layout_from_the_file_and_checks_the_output(tmp_path):
    pytest.importorskip("onnxruntime")
    pooled, tokens = make_onnx(tmp_path / "pooled.onnx"), make_onnx(tmp_path / "tokens.onnx", tokens=True)
    nhwc = make_onnx(tmp_path / "nhwc.onnx", layout="nhwc")
    code, out, err = tk("encoders", "add", "enc", "--onnx", pooled)
    assert code == 0, err
    from toolkit.plugins.backbones.encoders.spec import read_spec

    spec = read_spec(Path(out.strip()))
    assert (spec.input_size, spec.layout, spec.pooling, spec.dim) == (SIZE, "nchw", "as-is", 16)
    assert tk("encoders", "add", "enc_nhwc", "--onnx", nhwc)[0] == 0
    assert read_spec(Path(out.strip()).with_name("enc_nhwc.toml")).layout == "nhwc"
    failures = {
        ("enc", "--onnx", pooled): "already registered",
        ("resnet50", "--onnx", pooled): "already a backbone",
        ("two", "--onnx", pooled, "--savedmodel", tmp_path): "Exactly one of",
        ("tok", "--onnx", tokens): "outputs tokens",
        ("pooled_cls", "--onnx", pooled, "--pooling", "cls"): "outputs pooled features",
        ("wrong_size", "--onnx", pooled, "--input-size", "64"): "does not run on a 64x64",
        ("wrong_preset", "--onnx", pooled, "--preset", "uni2-h", "--input-size", "32"): "documents 1536-d",
        ("Bad-Name", "--onnx", pooled): "lower-case letters",
        ("nofile", "--onnx", tmp_path / "missing.onnx"): "no such file",
    }
    for args, message in failures.items():
        code, _, err = tk("encoders", "add", *args)
        assert code == 1 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    code, out, _ = tk("encoders", "list")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["enc", "enc_nhwc"]
    assert tk("encoders", "remove", "enc_nhwc")[0] == 0
    assert "enc_nhwc" not in tk("encoders", "list")[1]


def test_registered_encoders_keep_tk_start_fast(tmp_path):
    """Registration reads spec files only: listing commands import no runtime an encoder runs on."""
    pytest.importorskip("onnxruntime")
    assert tk("encoders", "add", "enc", "--onnx", make_onnx(tmp_path / "enc.onnx"))[0] == 0
    probe = ("import json, sys\nfrom toolkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(json.dumps([m for m in ('onnxruntime', 'onnx', 'keras_hub', 'tensorflow', 'keras') "
             "if m in sys.modules]), file=sys.stderr)")
    for args in (["--help"], ["plugins", "--json"], ["encoders", "list"], ["run", "--help"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert json.loads(done.stderr.strip().splitlines()[-1]) == [], args
        if args == ["plugins", "--json"]:
            assert "enc" in {row["name"] for row in json.loads(done.stdout)}
        if args == ["run", "--help"]:
            assert "encoders" in done.stdout and "registered" in done.stdout  # --backbone all includes them


# -- embeddings equal to the file run directly ---------------------------------------------------------

def test_onnx_encoder_embeds_like_a_plain_session_and_refuses_keras_only_paths(tmp_path, breakhis):
    ort = pytest.importorskip("onnxruntime")
    model = make_onnx(tmp_path / "enc.onnx")
    assert tk("encoders", "add", "enc", "--onnx", model, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")[0] == 0
    store = tmp_path / "tk.duckdb"
    code, _, err = run(breakhis, store, "enc")
    assert code == 0, err
    [vectors] = stored(store, "enc").values()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    direct = {sha: session.run(None, {"pixels": normalised(p, 0.5, 0.25).transpose(2, 0, 1)[None]})[0][0]
              for sha, p in pixels_by_sha(breakhis).items()}
    assert_same_embeddings(vectors, direct)

    code, _, err = run(breakhis, tmp_path / "bf16.duckdb", "enc", "--precision", "bf16")
    assert code == 3 and "enc is not a Keras model" in err and "--precision bf16 cannot use it" in err
    code, _, err = tk("export", "--backbone", "enc", "--store", store, "--out", tmp_path / "export")
    assert code != 0 and "enc is not a Keras model" in err
    code, _, err = tk("train", breakhis, "--backbone", "enc", "--store", tmp_path / "train.duckdb", "--epochs", "1")
    assert code != 0 and "so tk train cannot use it" in err


def test_onnx_token_output_pooled_cls_and_mean_on_centre_crops(tmp_path, breakhis):
    """Two encoders of one input size, one cropping and one stretching the (non-square) images, in one run:
    each gets its own pixels."""
    ort = pytest.importorskip("onnxruntime")
    model = make_onnx(tmp_path / "tokens.onnx", tokens=True)
    pooled = make_onnx(tmp_path / "pooled.onnx")
    assert tk("encoders", "add", "tok", "--onnx", model, "--pooling", "cls+mean", "--prefix-tokens", "1",
              "--resize", "center-crop")[0] == 0
    assert tk("encoders", "add", "flat", "--onnx", pooled)[0] == 0
    store = tmp_path / "tk.duckdb"
    assert run(breakhis, store, "tok,flat")[0] == 0
    [vectors] = stored(store, "tok").values()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    direct = {}
    for sha, pixels in pixels_by_sha(breakhis, "center-crop").items():
        tokens = session.run(None, {"pixels": normalised(pixels, 0.0, 1.0).transpose(2, 0, 1)[None]})[0][0]
        direct[sha] = np.concatenate([tokens[0], tokens[1:].mean(axis=0)])
    assert_same_embeddings(vectors, direct)
    [flat] = stored(store, "flat").values()
    session = ort.InferenceSession(str(pooled), providers=["CPUExecutionProvider"])
    assert_same_embeddings(flat, {sha: session.run(None, {"pixels": normalised(p, 0.0, 1.0).transpose(2, 0, 1)[None]})[0][0]
                                  for sha, p in pixels_by_sha(breakhis).items()})


def test_keras_hub_encoder_embeds_like_the_keras_hub_backbone(tmp_path, breakhis):
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is not in the test extra (it pulls full "
                                    "tensorflow); pip install --no-deps keras-hub to run this test")
    pytest.importorskip("safetensors")
    preset = make_dinov2(tmp_path / "dinov2", registers=2)
    code, _, err = tk("encoders", "add", "dino", "--keras-hub", preset, "--pooling", "cls+mean",
                      "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert code == 0, err
    store = tmp_path / "tk.duckdb"
    assert run(breakhis, store, "dino")[0] == 0
    [vectors] = stored(store, "dino").values()
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    shas, pixels = zip(*pixels_by_sha(breakhis).items())
    batch = normalised(np.stack(pixels), np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
    tokens = np.asarray(backbone.predict({"images": batch}, verbose=0))
    direct = np.concatenate([tokens[:, 0], tokens[:, 3:].mean(axis=1)], axis=1)  # CLS, 2 registers, patches
    assert_same_embeddings(vectors, dict(zip(shas, direct)))


def test_savedmodel_encoder_embeds_like_its_serving_signature(tmp_path, breakhis):
    import tensorflow as tf

    folder = make_savedmodel(tmp_path / "savedmodel")
    code, _, err = tk("encoders", "add", "pathfm", "--savedmodel", folder, "--output", "embedding")
    assert code == 0, err
    store = tmp_path / "tk.duckdb"
    assert run(breakhis, store, "pathfm")[0] == 0
    [vectors] = stored(store, "pathfm").values()
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    shas, pixels = zip(*pixels_by_sha(breakhis).items())
    direct = serve(image=tf.constant(normalised(np.stack(pixels), 0.0, 1.0)))["embedding"].numpy()  # inputs in [0, 1]
    assert_same_embeddings(vectors, dict(zip(shas, direct)))

    code, out, err = tk("export", "--backbone", "pathfm", "--store", store, "--out", tmp_path / "export",
                        "--format", "tflite", "--json")
    assert code == 0, err  # a Keras kind exports like a CNN: backbone + probe head, checked against Keras
    [row] = json.loads(out)["export_parity"]
    assert row["format"] == "tflite" and row["centred_cosine_mean"] > 0.999


# -- embedding sets keyed by file and spec --------------------------------------------------------------

def test_a_changed_spec_or_file_starts_a_new_set_and_mixes_nothing(tmp_path, breakhis):
    pytest.importorskip("onnxruntime")
    model = make_onnx(tmp_path / "enc.onnx")
    store = tmp_path / "tk.duckdb"
    assert tk("encoders", "add", "enc", "--onnx", model)[0] == 0
    assert run(breakhis, store, "enc")[0] == 0
    code, _, err = run(breakhis, store, "enc")
    assert code == 0 and "nothing to extract" in err  # same file, same spec: reused
    [first] = stored(store, "enc")
    moved = tmp_path / "usb" / "enc.onnx"  # the stick mounted elsewhere: same bytes, same spec, same set
    moved.parent.mkdir()
    moved.write_bytes(model.read_bytes())
    assert tk("encoders", "add", "enc", "--onnx", moved, "--force")[0] == 0
    code, _, err = run(breakhis, store, "enc")
    assert code == 0 and "nothing to extract" in err
    assert list(stored(store, "enc")) == [first]

    assert tk("encoders", "add", "enc", "--onnx", model, "--mean", "0.5,0.5,0.5", "--force")[0] == 0
    code, _, err = run(breakhis, store, "enc")
    assert code == 0 and "start a new embedding set" in err
    make_onnx(model, seed=1)  # the same path, other weights
    assert run(breakhis, store, "enc")[0] == 0
    sets = stored(store, "enc")
    assert len(sets) == 3 and list(sets)[0] == first
    tables = list(sets)
    assert tables[0].split("_spec")[0] == tables[1].split("_spec")[0]  # same file, other spec
    assert tables[1].split("_spec")[1] == tables[2].split("_spec")[1]  # same spec, other file
    for table in tables:
        assert len(sets[table]) == 32
    for a, b in ((0, 1), (1, 2)):
        sha = next(iter(sets[tables[a]]))
        assert not np.allclose(sets[tables[a]][sha], sets[tables[b]][sha])


def test_similar_embeds_a_new_image_with_the_onnx_encoder(tmp_path, breakhis):
    ort = pytest.importorskip("onnxruntime")
    from PIL import Image

    model = make_onnx(tmp_path / "enc.onnx")
    assert tk("encoders", "add", "enc", "--onnx", model)[0] == 0
    store = tmp_path / "tk.duckdb"
    assert run(breakhis, store, "enc")[0] == 0
    source = sorted(breakhis.rglob("*.png"))[5]
    query = tmp_path / "query.png"
    image = np.asarray(Image.open(source)).copy()
    image[0, 0] = 0  # new bytes: embedded now, not read from the store
    Image.fromarray(image).save(query)
    code, out, err = tk("similar", query, "--backbone", "enc", "--store", store, "-k", "3", "--format", "json")
    assert code == 0, err
    nearest = json.loads(out)
    assert len(nearest) == 3 and nearest[0]["relpath"].endswith(source.name)  # its near-copy ranks first
    from toolkit.ingest.images import load_rgb
    from toolkit.models.similar import embed_one
    from toolkit.plugin.registry import load_registry
    from toolkit.store import Store

    with Store.open(store) as opened:
        embedding_set, kind, path = opened.embeddings.current_set("enc")
    vector = embed_one(load_registry().backbones["enc"], query, kind, embedding_set.weights_id, path)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"pixels": normalised(load_rgb(query, (SIZE, SIZE)), 0, 1).transpose(2, 0, 1)[None]})
    np.testing.assert_allclose(vector, direct[0][0], rtol=1e-5, atol=1e-6)


def test_report_shows_the_encoder_beside_a_cnn(tmp_path, breakhis):
    pytest.importorskip("onnxruntime")
    model = make_onnx(tmp_path / "enc.onnx")
    assert tk("encoders", "add", "enc", "--onnx", model)[0] == 0
    out = tmp_path / "reports"
    from toolkit.plugin.registry import _cache, load_registry
    from toolkit.run.settings import select

    _cache.clear()
    assert "enc" in [b.name for b in select(load_registry().backbones, "all", "backbone")]  # all includes encoders
    code, stdout, err = tk("--plugin", TINY, "run", breakhis, "--backbone", "tiny,enc", "--store",
                           tmp_path / "tk.duckdb", "--out", out, "--analysis", "pca,probe", "--weights", "random")
    assert code == 0, err
    html = Path(stdout.strip().splitlines()[-1]).read_text()
    assert "2 neural networks (enc, tiny)" in html  # compared side by side
    assert hashlib.sha256(model.read_bytes()).hexdigest() in html  # the encoder file's provenance


@pytest.mark.parametrize("name", ["../../../victim", "ABSOLUTE"])
def test_encoders_remove_deletes_no_file_outside_the_encoders_folder(tmp_path, monkeypatch, name):
    """``tk encoders remove`` takes only backbone names, as ``add`` does: a path never reaches unlink."""
    victim = tmp_path / "victim.toml"
    victim.write_text("name = 'victim'\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # ../../../ from config/tk/encoders/ is tmp_path
    name = str(tmp_path / "victim") if name == "ABSOLUTE" else name
    code, _, err = tk("encoders", "remove", name)
    assert code != 0
    assert victim.exists()
    assert err.strip().splitlines()[-1].startswith(f"error: encoder name {name!r}: use lower-case letters")


def test_a_malformed_spec_is_one_warning_naming_its_file_and_every_command_still_works(tmp_path, monkeypatch):
    """A spec with a value of the wrong type (``input_size = "32"``) skips that encoder only."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "config" / "tk" / "encoders"
    folder.mkdir(parents=True)
    bad = folder / "bad.toml"
    bad.write_text('name = "bad"\nkind = "onnx"\npath = "/nowhere.onnx"\ninput_size = "32"\nmean = [0, "x", 0]\n')
    code, out, err = tk("plugins", "--json")
    assert code == 0
    assert "tiny" not in out and "resnet50" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: encoder spec {bad}: input_size = '32' is not a whole number; mean = [0, 'x', 0] "
                        "is not a list of numbers; fix it or register it again with `tk encoders add --force`; "
                        "encoder skipped"]
    assert tk("encoders", "remove", "bad")[0] == 0
    assert not bad.exists()


@pytest.mark.parametrize("name", ["resnet50_", "resnet50__x"])
def test_an_encoder_name_that_maps_onto_another_backbones_tables_is_refused(tmp_path, name):
    """``identifier("resnet50_")`` is ``resnet50``: such a name would take over ``embeddings_resnet50``."""
    code, _, err = tk("encoders", "add", name, "--onnx", make_onnx(tmp_path / "enc.onnx"))
    assert code != 0
    assert "single underscores" in err.strip().splitlines()[-1]
    from toolkit.plugins.backbones.encoders.spec import encoders_dir

    assert not (encoders_dir() / f"{name}.toml").exists()
