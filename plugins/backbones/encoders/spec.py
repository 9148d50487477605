"""Encoder specs: one small TOML file per encoder in tk's config folder.

A spec says which local file holds the network (``kind`` and ``path``) and how pixels reach it and
embeddings leave it: input size, resize rule, channel layout, mean/std on pixels scaled to [0, 1],
pooling of the output, dimension. The folder is ``$XDG_CONFIG_HOME/tk/encoders/`` (default
``~/.config/tk/encoders/``). Reading specs imports nothing heavy, so registering them keeps
``tk --help`` fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from toolkit import PLUGIN_NAME, TkError

KINDS = ("onnx", "keras-hub", "savedmodel")
LAYOUTS = ("nhwc", "nchw")
POOLINGS = ("as-is", "cls", "mean", "cls+mean")
RESIZE_RULES = ("stretch", "center-crop")
NAME = PLUGIN_NAME  # a backbone name, also a SQL identifier part
# what decides the embeddings besides the file's bytes: their hash is part of the embedding set's key
EMBEDDING_FIELDS = ("kind", "input_size", "resize", "layout", "mean", "std", "pooling", "prefix_tokens", "dim",
                    "output", "signature")


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    :ivar path: the ONNX file, the Keras-Hub preset folder (``config.json`` + ``model.safetensors``)
        or the SavedModel folder, absolute.
    :ivar mean: per-channel mean (R, G, B) subtracted from pixels scaled to [0, 1].
    :ivar std: per-channel divisor applied after the mean.
    :ivar pooling: ``as-is`` (the output is already ``(n, dim)``), ``cls`` (token 0), ``mean`` (mean of
        the patch tokens, after ``prefix_tokens``) or ``cls+mean`` (both, concatenated: Virchow2).
    :ivar prefix_tokens: tokens before the patch tokens (the CLS token and any register tokens).
    :ivar output: the output to read (an ONNX output name, a SavedModel signature output key); empty: the first.
    :ivar signature: the SavedModel signature to call.
    """

    name: str
    kind: str
    path: str
    input_size: int = 224
    resize: str = "stretch"
    layout: str = "nhwc"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pooling: str = "as-is"
    prefix_tokens: int = 1
    dim: int = 0
    output: str = ""
    signature: str = "serving_default"
    preset: str = ""
    licence: str = ""
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """sha256 of the fields that decide the embeddings (not the path: a moved file is the same file)."""
        values = {name: getattr(self, name) for name in EMBEDDING_FIELDS}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()

    def checked(self, origin: str) -> EncoderSpec:
        """The spec itself when every field is valid, else a TkError naming ``origin`` and the field."""
        problems = []
        if not NAME.match(self.name):
            problems.append(f"name {self.name!r} must be lower-case letters, digits and single underscores, starting "
                            "with a letter and not ending with _")
        for name, allowed in (("kind", KINDS), ("layout", LAYOUTS), ("pooling", POOLINGS), ("resize", RESIZE_RULES)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.kind == "keras-hub" and self.layout != "nhwc":
            problems.append("a Keras-Hub encoder takes nhwc input")
        if not 8 <= self.input_size <= 4096:
            problems.append(f"input_size {self.input_size} is not between 8 and 4096")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append("mean and std need three values (R, G, B), std above 0")
        if self.prefix_tokens < 0 or self.dim < 1:
            problems.append("prefix_tokens must be 0 or more and dim 1 or more")
        if problems:
            raise TkError(f"encoder spec {origin}: {'; '.join(problems)}; fix it or register it again with "
                          "`tk encoders add --force`")
        return self


def encoders_dir() -> Path:
    """``$XDG_CONFIG_HOME/tk/encoders`` (default ``~/.config/tk/encoders``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tk" / "encoders"


def spec_path(name: str) -> Path:
    """The spec file of encoder ``name`` in :func:`encoders_dir`; a TkError for a name that is not a
    backbone name, so that no name (``../x``, ``/abs/x``) reaches a file outside that folder."""
    if not NAME.match(name):
        raise TkError(f"encoder name {name!r}: use lower-case letters, digits and single underscores (starting with a "
                      "letter, not ending with _); "
                      "`tk encoders list` shows the registered ones")
    return encoders_dir() / f"{name}.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_spec(spec: EncoderSpec) -> Path:
    """Write ``spec`` to its file (atomically); returns the path."""
    path = spec_path(spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# tk encoder spec, written by `tk encoders add`; see docs/encoders.md"]
    lines += [f"{f.name} = {_toml_value(getattr(spec, f.name))}" for f in fields(spec)]
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def _type_problem(name: str, annotation: str, value: Any) -> str | None:
    """Why a spec file's ``value`` does not fit field ``name`` (annotated ``annotation``), or None."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if annotation == "int":
        fits, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif annotation == "str":
        fits, expected = isinstance(value, str), "text in quotes"
    else:  # tuple[float, float, float]
        fits, expected = isinstance(value, list) and all(map(number, value)), "a list of numbers"
    return None if fits else f"{name} = {value!r} is not {expected}"


def read_spec(path: Path) -> EncoderSpec:
    """The spec in ``path``; a TkError names the file and what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TkError(f"encoder spec {path}: cannot be read ({exc}); fix it or remove it "
                      "(`tk encoders remove NAME`)") from exc
    known = {f.name for f in fields(EncoderSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TkError(f"encoder spec {path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    mistyped = [problem for f in fields(EncoderSpec) if f.name in data
                for problem in [_type_problem(f.name, str(f.type), data[f.name])] if problem]
    if mistyped:
        raise TkError(f"encoder spec {path}: {'; '.join(mistyped)}; fix it or register it again with "
                      "`tk encoders add --force`")
    try:
        spec = EncoderSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except TypeError as exc:
        raise TkError(f"encoder spec {path}: {exc}; register it again with `tk encoders add --force`") from exc
    if spec.name != path.stem:
        raise TkError(f"encoder spec {path}: name {spec.name!r} differs from the file name; rename one of them")
    return spec.checked(str(path))


def spec_files() -> list[Path]:
    folder = encoders_dir()
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def as_row(spec: EncoderSpec) -> dict[str, Any]:
    """The spec as a flat dict (``tk encoders list --json``)."""
    row = asdict(spec)
    row["exists"] = Path(spec.path).exists()
    return row
