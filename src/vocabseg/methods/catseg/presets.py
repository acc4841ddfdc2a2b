"""CAT-Seg's zoo entries: ViT-B/16 and ViT-L/14@336 as published (configs/vitb_384.yaml,
configs/vitl_336.yaml, evaluated with eval.sh), and a tiny preset for tests."""
from __future__ import annotations

from ...spec import ModelSpec, WeightSource, preset
from .convert import load_published
from .model import CATSeg


def build(clip_arch: str, clip_size: int, guidance_layers: tuple[int, int], clip_weights: str | None = None,
          **kw) -> CATSeg:
    """CAT-Seg on open_clip ``clip_arch`` seeing ``clip_size`` views, guidance from
    blocks ``guidance_layers`` (0-based); ``kw``: the other ``CATSeg`` options (the
    published aggregator: hidden 128, 4 heads, 2 layers, window 12, pad_len 256)."""
    return CATSeg(clip_arch, clip_weights, clip_size=clip_size, guidance_layers=guidance_layers, **kw)


# The published files live in a Hugging Face *Space* (not a model repository), so they
# are fetched by URL. Their sha256 is not published and could not be computed offline:
# left unset rather than invented.
SPACE = "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/"
FACTS = dict(family="catseg", convention="catseg", converter=load_published,
             bench_vocabulary="ade150:catseg", text_vocabularies=("ade150:catseg", "ade847:catseg"))
# README of cvlab-kaist/CAT-Seg (mIoU; voc20b is PASCAL VOC with 39 PC-59 classes as background)
PUBLISHED_B16 = {"ade847": 12.0, "pc459": 19.0, "ade150": 31.8, "pc59": 57.5, "voc20": 94.6, "voc20b": 77.3}
PUBLISHED_L14 = {"ade847": 16.0, "pc459": 23.8, "ade150": 37.9, "pc59": 63.3, "voc20": 97.0, "voc20b": 82.5}
TINY = dict(clip_size=128, guidance_layers=(1, 2), hidden=32, heads=2, num_layers=2, window=4, pad_len=8,
            text_proj=16, appearance_proj=16, decoder_dims=(32, 16), decoder_guidance_dims=(32, 16),
            decoder_guidance_proj=(8, 8), kernel=96, stride=64, out_res=160, quick_gelu=False)

PRESETS = {
    "catseg-vit-b16": ModelSpec(
        "catseg-vit-b16", build=preset("catseg-vit-b16", build, clip_arch="ViT-B-16", clip_size=384,
                                       guidance_layers=(3, 7)),
        description="CAT-Seg with CLIP ViT-B/16 (OpenAI, q/v fine-tuned), trained on COCO-Stuff 171",
        weights=WeightSource(filename="catseg_model_base.pth", url=SPACE + "model_base.pth"),
        clip=("ViT-B-16", "openai"), published=PUBLISHED_B16, **FACTS),
    "catseg-vit-l14": ModelSpec(
        "catseg-vit-l14", build=preset("catseg-vit-l14", build, clip_arch="ViT-L-14-336", clip_size=336,
                                       guidance_layers=(7, 15)),
        description="CAT-Seg with CLIP ViT-L/14 at 336 px (OpenAI, q/v fine-tuned), trained on COCO-Stuff 171",
        weights=WeightSource(filename="catseg_model_large.pth", url=SPACE + "model_large.pth"),
        clip=("ViT-L-14-336", "openai"), published=PUBLISHED_L14, **FACTS),
    "catseg-tiny": ModelSpec("catseg-tiny", build=preset("catseg-tiny", build, clip_arch="tiny-vit", **TINY),
                             description="tiny random CAT-Seg for tests", clip=("tiny-vit", None),
                             test_only=True, **FACTS),
}
