"""Presets: the documented preprocessing and output of well-known pathology encoders.

A preset fills a spec's input size, resize rule, mean/std, pooling and dimension; the user supplies
the file (presets never download anything). Each constant's source is the model card in
``source`` (also listed in docs/encoders.md). ``pooling`` is the embedding the card recommends;
when the file already outputs pooled ``(n, dim)`` features (a timm model exported with
``num_classes=0``), ``tk encoders add`` takes them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)
NON_COMMERCIAL = "CC-BY-NC-ND 4.0: non-commercial research only, gated access; see the model card"


@dataclass(frozen=True)
class Preset:
    """What a model card documents about an encoder's input and output."""

    name: str
    model: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pooling: str
    prefix_tokens: int
    dim: int
    licence: str
    source: str
    resize: str = "center-crop"


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("uni", "UNI (ViT-L/16)", 224, IMAGENET_MEAN, IMAGENET_STD, "cls", 1, 1024, NON_COMMERCIAL,
           "https://huggingface.co/MahmoodLab/UNI"),
    Preset("uni2-h", "UNI2-h (ViT-H/14, 8 register tokens)", 224, IMAGENET_MEAN, IMAGENET_STD, "cls", 9, 1536,
           NON_COMMERCIAL, "https://huggingface.co/MahmoodLab/UNI2-h"),
    Preset("virchow2", "Virchow2 (ViT-H/14, 4 register tokens)", 224, IMAGENET_MEAN, IMAGENET_STD, "cls+mean", 5,
           2560, NON_COMMERCIAL, "https://huggingface.co/paige-ai/Virchow2"),
    Preset("h-optimus-0", "H-optimus-0 (ViT-g/14, 4 register tokens)", 224, H_OPTIMUS_MEAN, H_OPTIMUS_STD, "cls", 5,
           1536, "Apache-2.0; see the model card", "https://huggingface.co/bioptimus/H-optimus-0"),
    Preset("h-optimus-1", "H-optimus-1 (ViT-g/14, 4 register tokens)", 224, H_OPTIMUS_MEAN, H_OPTIMUS_STD, "cls", 5,
           1536, "non-commercial terms, gated access; see the model card",
           "https://huggingface.co/bioptimus/H-optimus-1"),
    Preset("phikon-v2", "Phikon-v2 (DINOv2 ViT-L/16)", 224, IMAGENET_MEAN, IMAGENET_STD, "cls", 1, 1024,
           "Owkin non-commercial licence; see the model card", "https://huggingface.co/owkin/phikon-v2"),
    Preset("ctranspath", "CTransPath (Swin-T with a convolutional stem)", 224, IMAGENET_MEAN, IMAGENET_STD, "as-is", 0,
           768, "GPL-3.0 (code); see the repository", "https://github.com/Xiyue-Wang/TransPath"),
    Preset("path-foundation", "Google Path Foundation (ViT-S, TF SavedModel)", 224, (0.0, 0.0, 0.0),
           (1.0, 1.0, 1.0), "as-is", 0, 384, "Health AI Developer Foundations terms; see the model card",
           "https://huggingface.co/google/path-foundation", resize="stretch"),
    Preset("conch", "CONCH image encoder (ViT-B/16)", 448, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "as-is", 0, 512,
           NON_COMMERCIAL, "https://huggingface.co/MahmoodLab/CONCH"),
)}
