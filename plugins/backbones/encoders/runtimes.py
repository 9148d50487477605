"""Running an encoder's file: ONNX Runtime sessions, Keras-Hub presets and SavedModels.

Nothing here is imported when tk starts: onnxruntime, keras_hub and TensorFlow load when a model is
built, and an ONNX encoder never loads TensorFlow. Every kind receives pixels already preprocessed by the spec (NHWC float32, mean/std applied)
and returns ``(n, dim)`` embeddings after the spec's pooling.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from toolkit import TkError
from toolkit.plugins.backbones.encoders.spec import EncoderSpec

# ONNX Runtime on a CPU ran a ViT-S/16 ~10% faster in batches of 8 than of 32 (benchmarks/onnx_encoder.py,
# docs/performance.md): tk's batches are cut into such chunks when the session runs on the CPU
CPU_CHUNK = 8
INSTALL = {"onnx": "pip install 'tk-embeddings[onnx]'", "keras-hub": "pip install 'tk-embeddings[keras-hub]'"}


def pool_tokens(output: Any, pooling: str, prefix_tokens: int, ops: Any = np) -> Any:
    """``(n, dim)`` from a model output: as it is, its token 0 (CLS), the mean of its patch tokens (after
    ``prefix_tokens``), or both concatenated. ``ops`` is numpy or ``keras.ops``."""
    if pooling == "as-is":
        return output
    cls, patches = output[:, 0], ops.mean(output[:, prefix_tokens:], axis=1)
    if pooling == "cls":
        return cls
    if pooling == "mean":
        return patches
    return ops.concatenate([cls, patches], axis=-1)


def _missing(kind: str, exc: ImportError) -> TkError:
    return TkError(f"{kind} encoders need {exc.name or 'a package'} ({INSTALL[kind]})")


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options tk uses: every graph optimisation, one intra-op thread per core, and threads
    that sleep instead of spinning between operators: on a busy machine spinning threads fight the
    decoding threads and other processes for the cores (benchmarks/onnx_encoder.py compares them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return options


def onnx_session(path: str, threads: int | None = None) -> Any:
    """An InferenceSession of ``path`` on CUDA when onnxruntime has it, else on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _missing("onnx", exc) from exc
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(path, session_options(threads), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for damaged or unsupported graphs
        raise TkError(f"{path} is not an ONNX model onnxruntime can run ({str(exc).splitlines()[0][:200]}); "
                      "export it again") from exc


def onnx_runner(spec: EncoderSpec, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """Preprocessed NHWC batch -> pooled embeddings through the ONNX file at ``path``."""
    session = onnx_session(path)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise TkError(f"{path} has {len(inputs)} inputs; tk feeds one image batch: export the image encoder alone")
    input_name = inputs[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = spec.output or outputs[0]
    if output not in outputs:
        raise TkError(f"{path} has no output {output!r}; its outputs are {', '.join(outputs)} (--output NAME)")

    chunk = CPU_CHUNK if session.get_providers()[0] == "CPUExecutionProvider" else None

    def run(pixels: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2) if spec.layout == "nchw" else pixels, np.float32)
        size = chunk or len(batch)
        result = np.concatenate([session.run([output], {input_name: batch[i:i + size]})[0]
                                 for i in range(0, len(batch), size)])
        return pool_tokens(np.asarray(result, np.float32), spec.pooling, spec.prefix_tokens)

    return run


def keras_model(spec: EncoderSpec, path: str) -> Any:
    """A Keras model: preprocessed NHWC batch -> pooled ``(n, dim)`` embeddings (Keras-Hub or SavedModel)."""
    from toolkit import import_tensorflow

    import_tensorflow()  # TensorFlow first, without its start-up chatter on stderr
    import keras

    size = (spec.input_size, spec.input_size, 3)
    inputs = keras.Input(size, name="pixels")
    if spec.kind == "keras-hub":
        backbone = _keras_hub_backbone(path, size)
        named = backbone.input  # Keras-Hub image backbones take {"images": batch}
        output = backbone({next(iter(named)): inputs} if isinstance(named, dict) else inputs)
    else:
        output = _savedmodel_output(spec, path, inputs)
    pooled = keras.layers.Lambda(lambda t: pool_tokens(t, spec.pooling, spec.prefix_tokens, keras.ops),
                                 name="pooling")(output)
    return keras.Model(inputs, pooled, name=spec.name)


def _keras_hub_backbone(path: str, size: tuple[int, int, int]) -> Any:
    try:
        import keras_hub
    except ImportError as exc:
        raise _missing("keras-hub", exc) from exc
    try:
        return keras_hub.models.Backbone.from_preset(path, image_shape=size)
    except (ValueError, KeyError, OSError, FileNotFoundError) as exc:
        raise TkError(f"{path} is not a Keras-Hub preset folder it can load offline ({str(exc).splitlines()[0][:200]}); "
                      "it needs config.json and model.safetensors (Hugging Face layout) or a Keras-Hub preset") from exc


def _savedmodel_output(spec: EncoderSpec, path: str, inputs: Any) -> Any:
    import keras

    try:
        layer = keras.layers.TFSMLayer(path, call_endpoint=spec.signature)
    except (ValueError, OSError) as exc:
        raise TkError(f"{path} is not a SavedModel with a {spec.signature!r} signature "
                      f"({str(exc).splitlines()[0][:200]}); give its folder and --signature NAME") from exc
    pixels = keras.ops.transpose(inputs, (0, 3, 1, 2)) if spec.layout == "nchw" else inputs
    output = layer(pixels)
    if isinstance(output, dict):
        if not spec.output and len(output) > 1:
            raise TkError(f"the {spec.signature} signature of {path} has outputs {', '.join(sorted(output))}; "
                          "name the embedding with --output KEY")
        key = spec.output or next(iter(output))
        if key not in output:
            raise TkError(f"the {spec.signature} signature of {path} has no output {key!r}; "
                          f"its outputs are {', '.join(sorted(output))}")
        output = output[key]
    return output


def probe_shape(spec: EncoderSpec, path: str) -> tuple[int, ...]:
    """The shape of the raw output (before pooling) for one blank image, as ``tk encoders add`` probes it."""
    blank = np.zeros((1, spec.input_size, spec.input_size, 3), np.float32)
    raw = replace(spec, pooling="as-is")
    try:
        if spec.kind == "onnx":
            return tuple(onnx_runner(raw, path)(blank).shape)
        return tuple(keras_model(raw, path)(blank).shape)
    except TkError:
        raise
    except Exception as exc:  # each runtime raises its own types for a wrong input shape or layout
        text = " ".join(str(exc).split())[:300]
        raise TkError(f"{path} does not run on a {spec.input_size}x{spec.input_size} {spec.layout} image "
                      f"({type(exc).__name__}: {text}); check --input-size and --layout") from exc


def model_input_size(kind: str, path: str, signature: str = "serving_default") -> int | None:
    """The square input size the file declares (ONNX input dims, config.json image_size, SavedModel
    signature), or None when it declares none."""
    if kind == "onnx":
        shape = onnx_session(path, threads=1).get_inputs()[0].shape
        sides = [d for d in (shape[1:3] if len(shape) == 4 and shape[-1] == 3 else shape[2:]) if isinstance(d, int)]
    elif kind == "keras-hub":
        import json
        from pathlib import Path

        config = Path(path) / "config.json"
        size = json.loads(config.read_text()).get("image_size") if config.is_file() else None
        sides = [size, size] if isinstance(size, int) else []
    else:
        from toolkit import import_tensorflow

        tf = import_tensorflow()
        try:
            specs = tf.saved_model.load(path).signatures[signature].structured_input_signature[1]
        except (KeyError, OSError, ValueError):
            return None
        shape = next(iter(specs.values())).shape if len(specs) == 1 else None
        sides = [d for d in (list(shape)[1:3] if shape is not None and len(shape) == 4 else []) if d]
    return sides[0] if len(sides) == 2 and sides[0] == sides[1] else None
