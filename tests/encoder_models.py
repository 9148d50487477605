"""Tiny encoders in each format tk loads from files, built by the tests themselves (no weights are
downloaded): an ONNX graph made with ``onnx.helper``, a Keras-Hub DINOv2 in the Hugging Face layout
(``config.json`` + ``model.safetensors``, random weights), and a SavedModel with a serving signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 32  # input size of every tiny encoder
PATCH = 8
WIDTH = 16  # token width


def make_onnx(path: Path, tokens: bool = False, seed: int = 0, layout: str = "nchw") -> Path:
    """Patchify conv -> tokens (n, 16, WIDTH) -> tanh, pooled by mean unless ``tokens``; input ``pixels``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((WIDTH, 3, PATCH, PATCH)) * 0.2).astype(np.float32)
    bias = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
    shape = ["n", 3, SIZE, SIZE] if layout == "nchw" else ["n", SIZE, SIZE, 3]
    nodes = []
    source = "pixels"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("Conv", [source, "kernel", "bias"], ["patches"], strides=[PATCH, PATCH]),
        helper.make_node("Reshape", ["patches", "flat_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["seq"], perm=[0, 2, 1]),
        helper.make_node("Tanh", ["seq"], ["tokens" if tokens else "activated"]),
    ]
    if not tokens:
        nodes.append(helper.make_node("ReduceMean", ["activated"], ["features"], axes=[1], keepdims=0))
    out_shape = ["n", (SIZE // PATCH) ** 2, WIDTH] if tokens else ["n", WIDTH]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("tokens" if tokens else "features", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(bias, "bias"),
         numpy_helper.from_array(np.array([0, WIDTH, -1], np.int64), "flat_shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_dinov2(folder: Path, seed: int = 0, registers: int = 2) -> Path:
    """A 2-layer DINOv2 with random weights in the Hugging Face layout Keras-Hub converts offline."""
    from safetensors.numpy import save_file

    hidden, layers, intermediate = WIDTH * 2, 2, WIDTH * 4
    config = {"model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": 4, "mlp_ratio": intermediate / hidden,
              "patch_size": PATCH, "image_size": SIZE, "layerscale_value": 1.0, "use_swiglu_ffn": False,
              "hidden_dropout_prob": 0.0, "drop_path_rate": 0.0, "num_channels": 3, "layer_norm_eps": 1e-6,
              "qkv_bias": True, "hidden_act": "gelu", "num_register_tokens": registers}
    rng = np.random.default_rng(seed)

    def rand(*shape: int, offset: float = 0.0) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1 + offset).astype(np.float32)

    patches = (SIZE // PATCH) ** 2
    weights = {"embeddings.cls_token": rand(1, 1, hidden), "embeddings.mask_token": rand(1, hidden),
               "embeddings.position_embeddings": rand(1, 1 + patches, hidden),
               "embeddings.patch_embeddings.projection.weight": rand(hidden, 3, PATCH, PATCH),
               "embeddings.patch_embeddings.projection.bias": rand(hidden),
               "layernorm.weight": rand(hidden, offset=1), "layernorm.bias": rand(hidden)}
    if registers:
        weights["embeddings.register_tokens"] = rand(1, registers, hidden)
    for i in range(layers):
        prefix = f"encoder.layer.{i}"
        for norm in ("norm1", "norm2"):
            weights[f"{prefix}.{norm}.weight"] = rand(hidden, offset=1)
            weights[f"{prefix}.{norm}.bias"] = rand(hidden)
        for part in ("query", "key", "value"):
            weights[f"{prefix}.attention.attention.{part}.weight"] = rand(hidden, hidden)
            weights[f"{prefix}.attention.attention.{part}.bias"] = rand(hidden)
        weights[f"{prefix}.attention.output.dense.weight"] = rand(hidden, hidden)
        weights[f"{prefix}.attention.output.dense.bias"] = rand(hidden)
        weights[f"{prefix}.layer_scale1.lambda1"] = rand(hidden, offset=1)
        weights[f"{prefix}.layer_scale2.lambda1"] = rand(hidden, offset=1)
        weights[f"{prefix}.mlp.fc1.weight"] = rand(intermediate, hidden)
        weights[f"{prefix}.mlp.fc1.bias"] = rand(intermediate)
        weights[f"{prefix}.mlp.fc2.weight"] = rand(hidden, intermediate)
        weights[f"{prefix}.mlp.fc2.bias"] = rand(hidden)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def make_savedmodel(folder: Path, seed: int = 0) -> Path:
    """A SavedModel whose ``serving_default(image)`` returns ``{"embedding": (n, WIDTH), "extra": (n, 2)}``."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable((rng.standard_normal((3, WIDTH)) * 0.5).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            features = tf.reduce_mean(tf.tanh(tf.einsum("nhwc,cd->nhwd", image, self.kernel)), axis=[1, 2])
            return {"embedding": features, "extra": tf.zeros([tf.shape(image)[0], 2])}

    module = Tiny()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder
