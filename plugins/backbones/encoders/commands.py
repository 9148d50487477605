"""``tk encoders add|list|remove``: register encoders from local files, list and remove them."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from toolkit import TkError
from toolkit.plugins.backbones.encoders.presets import PRESETS
from toolkit.plugins.backbones.encoders.spec import (EncoderSpec, as_row, read_spec, spec_files, spec_path,
                                                     write_spec)

if TYPE_CHECKING:
    from toolkit import CliContext

KIND_HELP = "Exactly one of --onnx FILE, --keras-hub DIR or --savedmodel DIR."


def _triple(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise TkError(f"{option} {text}: give three comma-separated numbers for R,G,B (pixels scaled to [0, 1])")
    return values  # type: ignore[return-value]


def _kind_and_path(onnx: Path | None, keras_hub: Path | None, savedmodel: Path | None) -> tuple[str, Path]:
    given = [(kind, path) for kind, path in (("onnx", onnx), ("keras-hub", keras_hub), ("savedmodel", savedmodel))
             if path is not None]
    if len(given) != 1:
        raise TkError(f"tk encoders add: {KIND_HELP}")
    kind, path = given[0]
    path = path.expanduser().resolve()
    if kind == "onnx" and not path.is_file():
        raise TkError(f"--onnx {path}: no such file; give the .onnx file")
    if kind != "onnx" and not path.is_dir():
        raise TkError(f"--{kind} {path}: no such folder; give the folder that holds "
                      f"{'config.json and model.safetensors' if kind == 'keras-hub' else 'saved_model.pb'}")
    return kind, path


def _default_layout(kind: str, path: Path) -> str:
    """nchw when an ONNX graph's input has 3 channels first (a PyTorch export), else nhwc."""
    if kind != "onnx":
        return "nhwc"
    from toolkit.plugins.backbones.encoders.runtimes import onnx_session

    shape = onnx_session(str(path), threads=1).get_inputs()[0].shape
    return "nchw" if len(shape) == 4 and shape[1] == 3 else "nhwc"


def _default_prefix_tokens(kind: str, path: Path) -> int:
    """1 (the CLS token), plus the register tokens a Hugging Face config.json declares."""
    config = path / "config.json"
    if kind == "keras-hub" and config.is_file():
        try:
            return 1 + int(json.loads(config.read_text()).get("num_register_tokens", 0))
        except (ValueError, TypeError, AttributeError):
            return 1
    return 1


def _pooling_for(shape: tuple[int, ...], pooling: str, explicit: bool, name: str) -> tuple[str, int]:
    """The pooling to record and the embedding dimension it gives, from the probed raw output shape."""
    if len(shape) == 2:
        if pooling == "as-is" or (pooling == "cls" and not explicit):
            return "as-is", shape[1]  # a pooled export: its features are taken as they are
        raise TkError(f"{name}: the file outputs pooled features {shape}, so --pooling {pooling} cannot apply; "
                      "use --pooling as-is, or export the token output (forward_features) for cls/mean pooling")
    if len(shape) == 3:
        if pooling == "as-is":
            raise TkError(f"{name}: the file outputs tokens {shape}; choose --pooling cls, mean or cls+mean")
        return pooling, shape[2] * (2 if pooling == "cls+mean" else 1)
    raise TkError(f"{name}: the file's output has shape {shape}; tk needs (n, dim) features or (n, tokens, dim)")


def add_encoder(name: str, kind: str, path: Path, preset: str | None = None, input_size: int | None = None,
                mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                layout: str | None = None, pooling: str | None = None, resize: str | None = None,
                prefix_tokens: int | None = None, output: str = "", signature: str = "serving_default",
                force: bool = False, taken: frozenset[str] = frozenset()) -> EncoderSpec:
    """Check the file by running it once on a blank image, then write the spec; returns it."""
    from toolkit.plugins.backbones.encoders.runtimes import model_input_size, probe_shape

    if spec_path(name).exists() and not force:
        raise TkError(f"encoder {name} is already registered ({spec_path(name)}); add --force to replace it")
    if name in taken and not spec_path(name).exists():
        raise TkError(f"{name} is already a backbone (see `tk plugins`); choose another encoder name")
    if preset is not None and preset not in PRESETS:
        raise TkError(f"--preset {preset}: unknown preset; known: {', '.join(PRESETS)}")
    known = PRESETS.get(preset or "")
    if input_size is None and known is None:
        input_size = model_input_size(kind, str(path), signature)
    spec = EncoderSpec(
        name=name, kind=kind, path=str(path), preset=preset or "",
        input_size=input_size or (known.input_size if known else 224),
        resize=resize or (known.resize if known else "stretch"),
        layout=layout or _default_layout(kind, path),
        mean=mean or (known.mean if known else (0.0, 0.0, 0.0)),
        std=std or (known.std if known else (1.0, 1.0, 1.0)),
        pooling=pooling or (known.pooling if known else "as-is"),
        prefix_tokens=prefix_tokens if prefix_tokens is not None else (
            known.prefix_tokens if known and known.pooling != "as-is" else _default_prefix_tokens(kind, path)),
        dim=1, output=output, signature=signature,
        licence=known.licence if known else "", source=known.source if known else "").checked(f"for {name}")
    shape = probe_shape(spec, str(path))
    chosen, dim = _pooling_for(shape, spec.pooling, pooling is not None, name)
    if known and dim != known.dim:
        raise TkError(f"{name}: the file gives {dim}-d embeddings but {known.model} documents {known.dim}-d "
                      f"({known.source}); is it the right file, or the right --preset?")
    spec = replace(spec, pooling=chosen, dim=dim).checked(f"for {name}")
    write_spec(spec)
    return spec


def encoders_app(cli: CliContext) -> typer.Typer:
    """The ``tk encoders`` command group."""
    app = typer.Typer(help="Encoders loaded from local files (ONNX, Keras-Hub presets, SavedModels): "
                           "register them, list them, remove them. See docs/encoders.md.",
                      no_args_is_help=True)

    @app.command(name="add")
    def add(
        name: str = typer.Argument(..., help="Backbone name for `tk run --backbone NAME` (a-z, 0-9, _)."),
        onnx: Optional[Path] = typer.Option(None, "--onnx", metavar="FILE", help="An ONNX image encoder."),
        keras_hub: Optional[Path] = typer.Option(None, "--keras-hub", metavar="DIR",
                                                 help="A Keras-Hub preset or Hugging Face folder (config.json + model.safetensors)."),
        savedmodel: Optional[Path] = typer.Option(None, "--savedmodel", metavar="DIR", help="A TensorFlow SavedModel folder."),
        preset: Optional[str] = typer.Option(None, "--preset", help=f"Documented preprocessing and output of: {', '.join(PRESETS)}."),
        input_size: Optional[int] = typer.Option(None, "--input-size", metavar="N", help="Square input size (default: the preset's, else the file's own, else 224)."),
        mean: Optional[str] = typer.Option(None, "--mean", metavar="R,G,B", help="Mean on pixels scaled to [0, 1] (default 0,0,0 or the preset's)."),
        std: Optional[str] = typer.Option(None, "--std", metavar="R,G,B", help="Std on pixels scaled to [0, 1] (default 1,1,1 or the preset's)."),
        layout: Optional[str] = typer.Option(None, "--layout", help="nchw | nhwc (default: read from an ONNX input, else nhwc)."),
        pooling: Optional[str] = typer.Option(None, "--pooling", help="as-is | cls | mean | cls+mean (default: the preset's, else as-is)."),
        resize: Optional[str] = typer.Option(None, "--resize", help="stretch | center-crop (default: the preset's, else stretch)."),
        prefix_tokens: Optional[int] = typer.Option(None, "--prefix-tokens", metavar="N", help="CLS + register tokens before the patch tokens (mean pooling)."),
        output: str = typer.Option("", "--output", help="Output to read (ONNX output name or SavedModel output key); default: the only/first one."),
        signature: str = typer.Option("serving_default", "--signature", help="SavedModel signature to call."),
        force: bool = typer.Option(False, "--force", help="Replace an encoder of the same name."),
    ) -> None:
        """Register an encoder: check the file by running it once, then write its spec."""
        kind, path = _kind_and_path(onnx, keras_hub, savedmodel)
        spec = add_encoder(name, kind, path, preset, input_size, _triple(mean, "--mean"), _triple(std, "--std"),
                           layout, pooling, resize, prefix_tokens, output, signature, force,
                           frozenset(cli.registry.backbones))
        print(spec_path(name))
        print(f"registered encoder {name}: {kind} {path}, {spec.input_size}x{spec.input_size} ({spec.resize}, "
              f"{spec.layout}), mean {list(spec.mean)}, std {list(spec.std)}, pooling {spec.pooling}, {spec.dim}-d; "
              f"use it with `tk run --backbone {name}`", file=sys.stderr)
        if spec.licence:
            print(f"licence: {spec.licence} ({spec.source})", file=sys.stderr)

    @app.command(name="list")
    def list_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
        """List registered encoders (an invalid spec is listed with its error)."""
        rows = []
        for path in spec_files():
            try:
                rows.append(as_row(read_spec(path)))
            except TkError as exc:
                rows.append({"name": path.stem, "error": str(exc)})
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        if not rows:
            print("no encoders registered; add one with `tk encoders add NAME --onnx FILE` (see docs/encoders.md)",
                  file=sys.stderr)
        for row in rows:
            if "error" in row:
                print(f"{row['name']}\tINVALID\t{row['error']}")
                continue
            missing = "" if row["exists"] else "\t(file missing)"
            print(f"{row['name']}\t{row['kind']}\t{row['preset'] or '-'}\t{row['input_size']}px\t{row['pooling']}\t"
                  f"{row['dim']}-d\t{row['path']}{missing}")

    @app.command(name="remove")
    def remove(name: str = typer.Argument(..., help="The encoder to unregister.")) -> None:
        """Unregister an encoder (its file and stored embeddings stay)."""
        path = spec_path(name)
        if not path.is_file():
            raise TkError(f"no encoder {name} is registered (see `tk encoders list`)")
        path.unlink()
        print(f"removed encoder {name}; its file and stored embeddings are kept", file=sys.stderr)

    return app
