"""Fine-tuned backbone variants: ``<base>@<train_id>`` names resolve to what ``tk train`` saved.

``tk train`` writes the fine-tuned feature extractor (the flat backbone graph up to the pooled
output) to ``<store dir>/tk_models/<base>@<train_id>.keras`` with a sidecar ``.json`` (base
backbone, train id, sha256 of the model file, base weights) and records the sidecar in an index in
the tk cache directory, so that ``tk run``, ``tk export`` and ``tk explain`` find a variant by name
whichever store they use. A ``tk_models/`` folder in the working directory is searched as well.

A variant keeps its base backbone's preprocessing, input size and Grad-CAM layer. Its ``build``
ignores the ``--weights`` request and loads the saved model after checking the file's sha256
against the one recorded at training time, so an embedding set named after a variant always comes
from exactly the trained weights.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import TkError
from toolkit.plugin.types import Backbone

VARIANT_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9_]{0,40})@(?P<train_id>t[0-9a-z-]{1,40})\Z")
MODEL_DIR = "tk_models"
INDEX_NAME = "variants.json"


@dataclass(frozen=True)
class VariantInfo:
    """What the sidecar of a saved variant records."""

    name: str
    base: str
    train_id: str
    model_path: str
    sha256: str
    base_weights_kind: str
    dim: int


def variant_name(base: str, train_id: str) -> str:
    """``<base>@<train_id>``, the name ``tk run --backbone`` accepts."""
    return f"{base}@{train_id}"


def model_path(store_path: Path, name: str) -> Path:
    """Where the ``.keras`` file of variant ``name`` trained into ``store_path`` goes."""
    return Path(store_path).resolve().parent / MODEL_DIR / f"{name}.keras"


def _index_path() -> Path:
    from toolkit.ingest.demo import cache_dir

    return cache_dir() / INDEX_NAME


def _read_index() -> dict[str, str]:
    path = _index_path()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def register_variant(info: VariantInfo) -> Path:
    """Write the sidecar next to the model and add it to the index; returns the sidecar path."""
    sidecar = Path(info.model_path).with_suffix(".json")
    sidecar.write_text(json.dumps(asdict(info), indent=2))
    index = {**_read_index(), info.name: str(sidecar)}
    path = _index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(index, indent=2, sort_keys=True))
    partial.replace(path)
    return sidecar


def find_variant(name: str) -> VariantInfo:
    """The sidecar of variant ``name`` from the index or ``./tk_models``; a TkError says what to do."""
    candidates = [_read_index().get(name), Path.cwd() / MODEL_DIR / f"{name}.json"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return VariantInfo(**json.loads(Path(candidate).read_text()))
    raise TkError(f"no trained variant {name!r}: train one with `tk train --backbone {name.split('@')[0]}` "
                  "(it prints the variant's name), or copy its .keras and .json files into ./tk_models/")


def _checked_file(info: VariantInfo) -> Path:
    from toolkit.ingest.scan import sha256_file

    path = Path(info.model_path)
    if not path.is_file():
        raise TkError(f"the model file of {info.name} ({path}) is gone; restore it or train again")
    if sha256_file(path) != info.sha256:
        raise TkError(f"the model file of {info.name} ({path}) changed since training (sha256 differs); "
                      "restore the trained file or train again")
    return path


def variant_backbone(base: Backbone, info: VariantInfo) -> Backbone:
    """A Backbone that loads the saved feature extractor and otherwise behaves like ``base``."""

    def build(weights: str | None) -> Any:  # the trained file is the weights: the request is ignored
        import keras

        return keras.saving.load_model(_checked_file(info), compile=False)

    return Backbone(name=info.name, dim=info.dim, build=build, preprocess=base.preprocess,
                    input_size=base.input_size, gradcam_layer=base.gradcam_layer,
                    imagenet=info.base_weights_kind == "imagenet", fixed_weights=str(_checked_file(info)),
                    description=f"{base.name} fine-tuned by tk train {info.train_id} (model sha256 {info.sha256[:16]})")


def resolve(backbones: dict[str, Backbone], name: str) -> Backbone:
    """The variant Backbone for ``<base>@<train_id>``; the base must be a loaded backbone."""
    match = VARIANT_NAME.match(name)
    if not match:
        raise TkError(f"{name!r} is not a backbone variant name: expected <backbone>@<train id>, "
                      "e.g. densenet201@t20261125-180112-ab12")
    if match["base"] not in backbones:
        known = ", ".join(sorted(backbones)) or "none"
        raise TkError(f"unknown backbone {match['base']!r} in {name!r}; available: {known} (see `tk plugins`)")
    info = find_variant(name)
    return variant_backbone(backbones[match["base"]], info)


def find_backbone(backbones: dict[str, Backbone], name: str) -> Backbone:
    """A registered backbone, or the fine-tuned variant ``<base>@<train_id>``."""
    if "@" in name:
        return resolve(backbones, name)
    if name not in backbones:
        known = ", ".join(sorted(backbones)) or "none"
        raise TkError(f"unknown backbone {name!r}; available: {known} (see `tk plugins`)")
    return backbones[name]


def with_variants(backbones: dict[str, Backbone], names: list[str]) -> dict[str, Backbone]:
    """``backbones`` plus the variants among ``names`` (those containing ``@``), resolved."""
    return {**backbones, **{name: resolve(backbones, name) for name in names if "@" in name}}
