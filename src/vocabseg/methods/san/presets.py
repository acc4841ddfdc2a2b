"""SAN's zoo entries: ViT-B/16 and ViT-L/14@336 as published, and a tiny preset for tests."""
from __future__ import annotations

from ...spec import ModelSpec, WeightSource, preset
from .convert import load_published
from .model import SAN
from .side import SideConfig


def build(clip_arch: str, split: int, heads: int, clip_resolution: float, fusion: dict,
          side_defaults: dict | None = None, side: dict | None = None, clip_weights: str | None = None,
          **kw) -> SAN:
    """SAN on open_clip ``clip_arch`` split after block ``split``; the side network's
    ``fusion`` map and bias ``heads`` (= CLIP's), ``side_defaults`` then ``side``
    overriding ``SideConfig`` fields; ``kw``: ``SAN`` options."""
    cfg = SideConfig(**{"fusion_map": fusion, "bias_heads": heads, **(side_defaults or {}), **(side or {})})
    return SAN(clip_arch, clip_weights, split=split, clip_resolution=clip_resolution, side=cfg, **kw)


FACTS = dict(family="san", convention="san", converter=load_published,
             text_vocabularies=("ade150:san", "ade847:san"))
PUBLISHED_B16 = {"ade847": 10.1, "pc459": 12.6, "ade150": 27.5, "pc59": 53.8, "voc20": 94.0}
PUBLISHED_L14 = {"ade847": 12.4, "pc459": 15.7, "ade150": 32.1, "pc59": 57.7, "voc20": 94.6}

build_san_vit_b16 = preset("san-vit-b16", build, clip_arch="ViT-B-16", split=9, heads=12, clip_resolution=0.5,
                           fusion={0: 0, 1: 3, 2: 6, 3: 9})
build_san_vit_l14 = preset("san-vit-l14", build, clip_arch="ViT-L-14-336", split=18, heads=16,
                           clip_resolution=0.7, fusion={0: 0, 1: 6, 2: 12, 3: 18})
build_san_tiny = preset("san-tiny", build, clip_arch="tiny-vit", split=2, heads=3, clip_resolution=0.5,
                        fusion={0: 0, 1: 1, 2: 2}, quick_gelu=False, train_points=32 * 32,
                        side_defaults=dict(width=32, depth=3, heads=2, patch_size=8, image_size=64, num_queries=8,
                                           deep_supervision=(2, 3), embed_channels=24, mlp_channels=24))

PRESETS = {
    "san-vit-b16": ModelSpec(
        "san-vit-b16", build=build_san_vit_b16,
        description="SAN with CLIP ViT-B/16 (OpenAI), trained on COCO-Stuff 171",
        weights=WeightSource(filename="san_vit_b_16.pth", repo_id="Mendel192/san"),
        clip=("ViT-B-16", "openai"), published=PUBLISHED_B16, **FACTS),
    "san-vit-l14": ModelSpec(
        "san-vit-l14", build=build_san_vit_l14,
        description="SAN with CLIP ViT-L/14 at 336 px (OpenAI), trained on COCO-Stuff 171",
        weights=WeightSource(filename="san_vit_large_14.pth", repo_id="Mendel192/san"),
        clip=("ViT-L-14-336", "openai"), published=PUBLISHED_L14, **FACTS),
    "san-tiny": ModelSpec("san-tiny", build=build_san_tiny, description="tiny random SAN for tests",
                          clip=("tiny-vit", None), test_only=True, **FACTS),
}
