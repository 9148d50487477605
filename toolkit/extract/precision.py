"""Extraction at a lower numeric precision: ``tk run --precision bf16|fp16|int8``.

- ``bf16``: the same network and weights computing in bfloat16 (Keras ``mixed_bfloat16``: variables
  stay float32, layers compute in bfloat16; the embedding is cast back to float32). For CPUs with
  bfloat16 instructions (AVX-512 BF16, AMX) and recent GPUs.
- ``fp16``: the same in float16 (Keras ``mixed_float16``), for GPUs with float16 tensor cores. CPUs
  compute float16 slowly; the run warns when TensorFlow sees no GPU.
- ``int8``: the embedding network (its preprocessing included) converted to a full-integer TFLite
  model with uint8 input, calibrated on a sample of the run's own images, run by LiteRT (XNNPACK).
  The converted model is cached in the tk cache folder, keyed by backbone, weights and calibration
  pixels, and recorded with the embedding set, so later runs add to the set with the same model.

Each lowered extractor is checked against the fp32 model on held-out images of the run (centred
cosine, similarity rank correlation), and the numbers are stored with the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.errors import TkError
from toolkit.plugin.types import Backbone
from toolkit.ingest.scan import sha256_file
from toolkit.extract.weights import ResolvedWeights

MIXED_POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # Keras dtype policies
N_CALIBRATION = 64
N_PARITY = 16
PARITY_WARNING_BELOW = 0.95  # centred cosine mean; the bar for int8 embeddings worth reporting
INT8_FORMAT = "int8-embedding-v1"  # change when the conversion changes, so cached models are rebuilt

Extract = Callable[[np.ndarray], np.ndarray]


def device_note(precision: str) -> str | None:
    """A warning when ``precision`` is slow on this machine (fp16 with no GPU), else None."""
    from toolkit.extract.tfimport import tensorflow

    if precision != "fp16" or tensorflow().config.list_physical_devices("GPU"):
        return None
    return ("--precision fp16: TensorFlow sees no GPU here, and CPUs compute float16 slowly (slower than fp32); "
            "on a CPU use bf16 or int8")


def mixed_model(model: Any, precision: str) -> Any:
    """The same network and weights computing in ``precision`` (bf16 or fp16; variables stay float32)."""
    import keras

    def lowered(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = MIXED_POLICIES[precision]
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=lowered, recursive=True)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # a layer that cannot be rebuilt from its config
        raise TkError(f"model {model.name} cannot be computed in {precision} ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200]}); use --precision fp32 or int8") from exc
    return clone


def int8_cache_path(backbone: Backbone, resolved: ResolvedWeights, calibration: np.ndarray) -> Path:
    """Where the int8 model of this backbone, weights and calibration set is cached."""
    import keras
    import tensorflow as tf

    from toolkit.ingest.demo import cache_dir
    from toolkit.store import identifier

    identity = json.dumps([INT8_FORMAT, backbone.name, backbone.dim, list(backbone.input_size), resolved.weights_id,
                           resolved.sha256, keras.__version__, tf.__version__])
    digest = hashlib.sha256(identity.encode())
    digest.update(np.ascontiguousarray(calibration, dtype=np.uint8).tobytes())
    name = f"{identifier(backbone.name)}-{identifier(resolved.weights_id)}-{digest.hexdigest()[:16]}.tflite"
    return cache_dir() / "int8" / name


def int8_model(backbone: Backbone, model: Any, resolved: ResolvedWeights, calibration: np.ndarray) -> tuple[Path, bool]:
    """The cached full-integer model of ``model``, converted first if needed; (path, converted now)."""
    from toolkit.extract.conversion import convert, write_savedmodel

    path = int8_cache_path(backbone, resolved, calibration)
    if path.is_file():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = convert(write_savedmodel(backbone, model, Path(tmp) / "model"), "int8", calibration)
    except Exception as exc:  # the converter raises many kinds; one backbone failing must not stop the run
        raise TkError(f"{backbone.name} cannot be converted to int8 ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); use --precision fp32 or bf16") from exc
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)  # atomic: another process never reads half a model
    return path, True


def lite_extractor(path: Path | str) -> Extract:
    """Embeddings from a ``.tflite`` embedding model, LiteRT with one thread per core."""
    from toolkit.extract.litert import LiteModel

    lite = LiteModel(path, threads=os.cpu_count() or 2)
    return lambda batch: lite(batch)["embedding"]


@dataclass
class Lowered:
    """A backbone's extractor at the requested precision, and what it was checked against."""

    precision: str
    extract: Extract
    parity: dict[str, float] = field(default_factory=dict)
    model_path: str | None = None
    model_sha256: str | None = None
    converted: bool = False  # the int8 model was converted in this run (not taken from the cache)
    notes: list[str] = field(default_factory=list)


def extractor_at(backbone: Backbone, model: Any, precision: str, batch_size: int) -> Extract:
    """The extractor of ``model`` computing in fp32, bf16 or fp16: the one place that turns a
    (backbone, model, precision) into an extractor. int8 runs a converted model instead
    (:func:`lower`, ``lite_extractor``)."""
    from toolkit.extract.pipeline import make_extractor

    return make_extractor(backbone, mixed_model(model, precision) if precision in MIXED_POLICIES else model,
                          batch_size)


def lower(backbone: Backbone, model: Any, resolved: ResolvedWeights, precision: str, batch_size: int,
          contents: list[tuple[str, str]], seed: int, recorded: tuple[str, str] | None = None) -> Lowered:
    """The extractor of ``model`` at ``precision`` with its parity against fp32.

    ``contents`` are the run's images (path, sha256), one per distinct content in a fixed order; calibration images
    (int8) and held-out parity images are drawn from them by ``seed``, disjoint whenever the run has
    more than ``N_PARITY`` images. ``recorded`` is the int8 model (path, sha256) that made the set
    so far: it is reused, so that one set never holds vectors of two quantised models.
    """
    from toolkit.extract.conversion import calibration_sample
    from toolkit.extract.external import require_keras

    if precision == "fp32":
        return Lowered(precision, extractor_at(backbone, model, precision, batch_size))
    require_keras(backbone, model, f"--precision {precision}")
    n_calibration = N_CALIBRATION if precision == "int8" else 0
    calibration, held_out = calibration_sample(contents, backbone.input_size, seed, n_calibration, N_PARITY)
    if precision == "int8":
        lowered = _int8(backbone, model, resolved, calibration, recorded)
    else:
        lowered = Lowered(precision, extractor_at(backbone, model, precision, batch_size))
    lowered.parity = parity_against(backbone, model, lowered.extract, held_out, batch_size)
    return lowered


def _int8(backbone: Backbone, model: Any, resolved: ResolvedWeights, calibration: np.ndarray,
          recorded: tuple[str, str] | None) -> Lowered:
    notes = []
    if recorded is not None:
        path, sha = recorded
        if Path(path).is_file() and sha256_file(Path(path)) == sha:
            return Lowered("int8", lite_extractor(path), model_path=path, model_sha256=sha)
        notes.append(f"the int8 model that made the stored {backbone.name} int8 embeddings ({path}) is gone or "
                     "changed; a new one is calibrated on this run's images, so new and stored int8 embeddings "
                     "may differ slightly (see the recorded parity)")
    path, converted = int8_model(backbone, model, resolved, calibration)
    return Lowered("int8", lite_extractor(path), model_path=str(path), model_sha256=sha256_file(Path(path)),
                   converted=converted, notes=notes)


RUN_PARITY_ADVICE = "statistics on them may not match an fp32 run: use --precision fp32 for results you report"


def parity_warning(backbone: str, precision: str, parity: dict[str, float], reference: str = "fp32",
                   advice: str = RUN_PARITY_ADVICE) -> str | None:
    """A warning when embeddings at ``precision`` (a ``--precision`` or an export format) are far
    from ``reference`` (centred cosine mean below PARITY_WARNING_BELOW), else None."""
    mean = parity.get("centred_cosine_mean")
    if mean is None or mean >= PARITY_WARNING_BELOW:
        return None
    return (f"{backbone} {precision} embeddings differ from {reference} (centred cosine {mean:.3f} mean on "
            f"{parity.get('n_images')} held-out images, below {PARITY_WARNING_BELOW}); {advice}")


def parity_against(backbone: Backbone, model: Any, extract: Extract, pixels: np.ndarray,
                   batch_size: int) -> dict[str, float]:
    """Centred cosine and similarity rank correlation of ``extract`` against the fp32 model on the
    same raw pixels.

    The fp32 reference runs through the same fixed-batch graph as ``--precision fp32`` (equal to a
    plain ``model(x)`` call, tests/test_precision.py): an eager call of DenseNet201 or ResNet50 on 16
    images left ~2.5 GB in TensorFlow's allocator for the rest of the run (measured).
    """
    from toolkit.extract.parity import embedding_parity
    from toolkit.extract.pipeline import embed_padded

    reference = embed_padded(extractor_at(backbone, model, "fp32", batch_size), pixels, batch_size)
    return embedding_parity(reference, embed_padded(extract, pixels, batch_size))


def query_extractor(backbone: Backbone, model: Any, precision: str, recorded: tuple[str, str] | None) -> tuple[Extract, str]:
    """An extractor for one image at a set's precision, and a warning ('' when none), for
    ``tk similar``: a new query must be embedded the way the stored images were."""
    if precision == "int8":
        if recorded and Path(recorded[0]).is_file():
            return lite_extractor(recorded[0]), ""
        return extractor_at(backbone, model, "fp32", 1), (f"the int8 model of the stored {backbone.name} embeddings "
                                                          "is gone; the query is embedded in fp32, so similarities "
                                                          "are approximate")
    return extractor_at(backbone, model, precision, 1), ""
