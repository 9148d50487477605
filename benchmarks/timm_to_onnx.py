"""Export a timm image encoder from a local checkpoint to ONNX for `tk encoders add --onnx`, and check
ONNX Runtime against PyTorch on the same pixels. Runs where torch, timm, onnx and onnxruntime are
installed (no network: the architecture comes from --preset or --arch/--timm-kwargs, the weights
from --checkpoint); it is not part of the test suite.

    python benchmarks/timm_to_onnx.py --preset uni2-h --checkpoint pytorch_model.bin --out uni2h.onnx
    python benchmarks/timm_to_onnx.py --arch vit_large_patch16_224 \
        --timm-kwargs '{"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": true}' \
        --checkpoint pytorch_model.bin --out uni.onnx

The exported graph takes ``pixels`` (n, 3, size, size), normalised as the model card says, and
outputs ``features``: what ``model(pixels)`` returns (with ``num_classes=0``, the pooled CLS token).
"""

from __future__ import annotations

import argparse
import json
import sys

# The architectures of the model cards (timm.create_model arguments); the callables are named here
# and resolved once torch and timm are imported.
ARCHITECTURES = {
    "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                                      "dynamic_img_size": True}),
    "uni2-h": ("vit_giant_patch14_224", {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                                         "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                                         "num_classes": 0, "no_embed_class": True, "mlp_layer": "SwiGLUPacked",
                                         "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True}),
}


def build(arch: str, kwargs: dict, checkpoint: str):
    import timm
    import torch

    resolved = dict(kwargs)
    if resolved.get("mlp_layer") == "SwiGLUPacked":
        resolved["mlp_layer"] = timm.layers.SwiGLUPacked
    if resolved.get("act_layer") == "SiLU":
        resolved["act_layer"] = torch.nn.SiLU
    model = timm.create_model(arch, pretrained=False, **resolved)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(ARCHITECTURES))
    parser.add_argument("--arch", help="timm architecture name (with --timm-kwargs), instead of --preset")
    parser.add_argument("--timm-kwargs", default="{}", help="JSON of timm.create_model keyword arguments")
    parser.add_argument("--checkpoint", required=True, help="the local state dict (pytorch_model.bin)")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    try:
        import numpy as np
        import onnxruntime as ort
        import torch
    except ImportError as exc:
        sys.exit(f"this script needs torch, timm, onnx and onnxruntime ({exc.name} is missing)")
    arch, kwargs = ARCHITECTURES[args.preset] if args.preset else (args.arch, json.loads(args.timm_kwargs))
    if not arch:
        sys.exit("give --preset or --arch")
    model = build(arch, kwargs, args.checkpoint)
    sample = torch.randn(2, 3, args.size, args.size)
    torch.onnx.export(model, (sample,), args.out, input_names=["pixels"], output_names=["features"],
                      dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset_version=17)
    with torch.no_grad():
        expected = model(sample).numpy()
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"pixels": sample.numpy()})[0]
    cosine = (expected * got).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    print(f"wrote {args.out}: output {got.shape[1:]}, ONNX Runtime vs PyTorch cosine min {cosine.min():.6f}")


if __name__ == "__main__":
    main()
