"""ONNX encoder benchmark: tk's ONNX extraction of a ViT-S/16-sized encoder against the best plain
onnxruntime loop found on the same batches.

    python benchmarks/onnx_encoder.py [--images 32] [--rounds 5] [--quick]

The ViT-S/16 (224x224, 12 blocks of 6 heads, width 384, MLP 1536: ~22M parameters, CLS-token
output) is written with ``onnx.helper`` and random weights, since no weights can be downloaded.
The plain loop feeds already-normalised NCHW float32 batches to ``InferenceSession.run`` and tries
every combination of intra-op threads, graph optimisation level, batch size and thread spinning; tk runs its own
extractor (uint8 pixels -> normalisation -> NCHW -> session -> pooling) at ``tk run``'s batch size.
Every setting and tk are timed round robin, one pass each per round, so that load from other
processes falls on all of them alike; medians over the rounds are compared, and the ratio best
plain / tk is the number the issue bounds (<= 1.2).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH, DEPTH, HEADS, MLP, PATCH, SIZE = 384, 12, 6, 1536, 16, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vit_s16(path: Path, seed: int = 0) -> Path:
    """A ViT-S/16 with random weights as an ONNX graph: pixels (n, 3, 224, 224) -> CLS features (n, 384)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights: list = []
    nodes: list = []

    def const(name: str, array: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def rand(name: str, *shape: int, scale: float = 0.02, offset: float = 0.0) -> str:
        return const(name, (rng.standard_normal(shape) * scale + offset).astype(np.float32))

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    tokens = (SIZE // PATCH) ** 2
    head = WIDTH // HEADS
    x = node("Conv", ["pixels", rand("patch_w", WIDTH, 3, PATCH, PATCH), rand("patch_b", WIDTH)], "patches",
             strides=[PATCH, PATCH])
    x = node("Reshape", [x, const("flat", np.array([0, WIDTH, -1], np.int64))], "flat_patches")
    x = node("Transpose", [x], "seq", perm=[0, 2, 1])
    batch = node("Slice", [node("Shape", ["pixels"], "in_shape"), const("zero", np.array([0], np.int64)),
                           const("one", np.array([1], np.int64))], "batch")
    cls_shape = node("Concat", [batch, const("cls_tail", np.array([1, WIDTH], np.int64))], "cls_shape", axis=0)
    cls = node("Expand", [rand("cls", 1, 1, WIDTH), cls_shape], "cls_tokens")
    x = node("Concat", [cls, x], "with_cls", axis=1)
    x = node("Add", [x, rand("pos", 1, tokens + 1, WIDTH)], "embedded")
    split_heads = const("split_heads", np.array([0, tokens + 1, 3, HEADS, head], np.int64))
    merge_heads = const("merge_heads", np.array([0, tokens + 1, WIDTH], np.int64))
    scale = const("scale", np.array(head ** -0.5, np.float32))
    half, one, root2 = (const(n, np.array(v, np.float32)) for n, v in (("half", 0.5), ("onef", 1.0), ("root2", 2 ** 0.5)))
    for i in range(DEPTH):
        p = f"b{i}_"
        h = node("LayerNormalization", [x, rand(p + "ln1_g", WIDTH, offset=1), rand(p + "ln1_b", WIDTH)], p + "ln1",
                 axis=-1, epsilon=1e-6)
        qkv = node("Add", [node("MatMul", [h, rand(p + "qkv_w", WIDTH, 3 * WIDTH)], p + "qkv_mm"),
                           rand(p + "qkv_b", 3 * WIDTH)], p + "qkv")
        qkv = node("Transpose", [node("Reshape", [qkv, split_heads], p + "qkv_r")], p + "qkv_t", perm=[2, 0, 3, 1, 4])
        q, k, v = (node("Gather", [qkv, const(p + f"i{j}", np.array(j, np.int64))], p + n, axis=0)
                   for j, n in enumerate("qkv"))
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [k], p + "kt", perm=[0, 1, 3, 2])], p + "qk"),
                              scale], p + "scores")
        attended = node("MatMul", [node("Softmax", [scores], p + "attn", axis=-1), v], p + "attended")
        merged = node("Reshape", [node("Transpose", [attended], p + "att_t", perm=[0, 2, 1, 3]), merge_heads], p + "merged")
        projected = node("Add", [node("MatMul", [merged, rand(p + "proj_w", WIDTH, WIDTH)], p + "proj_mm"),
                                 rand(p + "proj_b", WIDTH)], p + "proj")
        x = node("Add", [x, projected], p + "res1")
        h = node("LayerNormalization", [x, rand(p + "ln2_g", WIDTH, offset=1), rand(p + "ln2_b", WIDTH)], p + "ln2",
                 axis=-1, epsilon=1e-6)
        h = node("Add", [node("MatMul", [h, rand(p + "fc1_w", WIDTH, MLP)], p + "fc1_mm"), rand(p + "fc1_b", MLP)],
                 p + "fc1")
        erf = node("Erf", [node("Div", [h, root2], p + "scaled")], p + "erf")
        h = node("Mul", [node("Mul", [h, half], p + "half"), node("Add", [erf, one], p + "erf1")], p + "gelu")
        h = node("Add", [node("MatMul", [h, rand(p + "fc2_w", MLP, WIDTH)], p + "fc2_mm"), rand(p + "fc2_b", WIDTH)],
                 p + "fc2")
        x = node("Add", [x, h], p + "res2")
    x = node("LayerNormalization", [x, rand("norm_g", WIDTH, offset=1), rand("norm_b", WIDTH)], "normed",
             axis=-1, epsilon=1e-6)
    node("Gather", [x, const("cls_index", np.array(0, np.int64))], "features", axis=1)
    graph = helper.make_graph(nodes, "vit_s16",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def images_per_second(run, batches: list[np.ndarray], repeats: int) -> float:
    """Best of ``repeats`` passes over ``batches`` (after one warm-up batch)."""
    run(batches[0])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        best = min(best, time.perf_counter() - started)
    return sum(len(b) for b in batches) / best


def normalised_nchw(pixels: np.ndarray) -> np.ndarray:
    normalised = ((pixels / np.float32(255) - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(normalised, np.float32)


def plain_runner(path: Path, threads: int, level: str, size: int, spinning: bool, pixels: np.ndarray):
    """(run, batches) of a plain session loop on normalised NCHW batches of ``size``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    normalised = normalised_nchw(pixels)
    batches = [normalised[i:i + size] for i in range(0, len(normalised), size)]
    return (lambda b: session.run(["features"], {"pixels": b})), batches


def tk_runner(path: Path, pixels: np.ndarray):
    """(run, batches) of tk's extractor for an encoder registered from ``path`` (as ``tk run`` embeds)."""
    from toolkit.extract.pipeline import BATCH_SIZE, make_extractor
    from toolkit.extract.weights import build_model
    from toolkit.plugins.backbones.encoders import encoder_backbone
    from toolkit.plugins.backbones.encoders.spec import EncoderSpec

    spec = EncoderSpec(name="vit_s16", kind="onnx", path=str(path), input_size=SIZE, layout="nchw", mean=MEAN,
                       std=STD, pooling="as-is", dim=WIDTH)
    backbone = encoder_backbone(spec)
    model, _ = build_model(backbone, str(path))
    return make_extractor(backbone, model, BATCH_SIZE), [pixels[i:i + BATCH_SIZE] for i in range(0, len(pixels), BATCH_SIZE)]


def describe(setting: tuple[int, str, int, bool]) -> str:
    threads, level, size, spinning = setting
    return f"threads={threads} optimisation={level} batch={size} spinning={'on' if spinning else 'off'}"


def settings(quick: bool) -> list[tuple[int, str, int, bool]]:
    """The plain settings tried: intra-op threads, graph optimisation level, batch size, spinning."""
    cores = os.cpu_count() or 1
    threads = sorted({1, cores} if quick else {1, max(1, cores // 2), cores})
    levels = ("basic", "all") if quick else ("basic", "extended", "all")
    sizes = (8, 32) if quick else (1, 8, 16, 32)
    return list(itertools.product(threads, levels, sizes, (True, False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images per pass (a multiple of 32)")
    parser.add_argument("--rounds", type=int, default=5, help="passes of every setting, round robin")
    parser.add_argument("--quick", action="store_true", help="fewer settings (threads 1/all, batch 8/32)")
    args = parser.parse_args()
    pixels = np.random.default_rng(0).integers(0, 256, (args.images, SIZE, SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = vit_s16(Path(tmp) / "vit_s16.onnx")
        print(f"ViT-S/16 ONNX graph: {path.stat().st_size / 1e6:.0f} MB; {args.images} images, {os.cpu_count()} cores")
        runners = {describe(s): plain_runner(path, *s, pixels) for s in settings(args.quick)}
        runners["tk"] = tk_runner(path, pixels)
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):  # round robin: load from other processes falls on every setting alike
            for name, (run, batches) in runners.items():
                rates[name].append(images_per_second(run, batches, 1))
    medians = {name: float(np.median(found)) for name, found in rates.items()}
    for name in runners:
        print(f"  {name:<55} median {medians[name]:7.2f}  best {max(rates[name]):7.2f} images/s")
    best = max((name for name in runners if name != "tk"), key=medians.get)
    print(f"best plain onnxruntime: {medians[best]:.2f} images/s median ({best})")
    print(f"tk (onnx encoder, batch 32 run in chunks of 8; threads=cores optimisation=all spinning=off): "
          f"{medians['tk']:.2f} images/s median")
    print(f"ratio best plain / tk: {medians[best] / medians['tk']:.3f} (the issue's bound: 1.2)")


if __name__ == "__main__":
    main()
