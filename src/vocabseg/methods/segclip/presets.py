"""SegCLIP's zoo entries: the published ViT-B/16 model and a tiny preset for tests."""
from __future__ import annotations

import os

from ...backbones.clip import create_clip
from ...protocol import Protocol
from ...spec import ModelSpec, WeightSource, preset
from .convert import load_published
from .model import SegCLIP


def build(arch: str, split: int, clip_weights: str | None = None, **kw) -> SegCLIP:
    """SegCLIP on open_clip ``arch``; ``clip_weights`` an open_clip tag or file
    (None: random init; load the published checkpoint with ``convert.load_published``)."""
    clip, tokenizer, _ = create_clip(arch, clip_weights)
    return SegCLIP(clip, tokenizer, split, arch=arch, **kw).eval()


def build_b16(**kw) -> SegCLIP:
    """CLIP ViT-B/16 (OpenAI, QuickGELU), split after block 10 (of 12)."""
    tag = kw.get("clip_weights")
    arch = "ViT-B-16" if tag and not os.path.isfile(tag) else "ViT-B-16-quickgelu"   # the openai tag sets QuickGELU
    return build(arch, 10, **kw)


def build_tiny(**kw) -> SegCLIP:
    """tiny-vit (4 blocks, width 48, 3 heads, 64 px), split after block 2; 64 px windows."""
    protocol = Protocol(short_side=64, max_side=512, mode="slide", window=64, stride=64, size_divisibility=16)
    return build("tiny-vit", 2, protocol=protocol, **kw)


FACTS = dict(family="segclip", converter=load_published)

PRESETS = {
    "segclip-vit-b16": ModelSpec(
        "segclip-vit-b16", build=preset("segclip-vit-b16", build_b16),
        description="SegCLIP, CLIP ViT-B/16 (OpenAI), trained on CC3M + COCO captions",
        weights=WeightSource("segclip.bin",
                             url="https://github.com/ArrowLuo/SegCLIP/releases/download/checkpoint_v0/segclip.bin"),
        clip=("ViT-B-16", "openai"),
        published={"voc21": 52.6, "pc60": 24.7, "coco-object": 26.5}, **FACTS),
    "segclip-tiny": ModelSpec("segclip-tiny", build=preset("segclip-tiny", build_tiny),
                              description="tiny random SegCLIP for tests", clip=("tiny-vit", None), test_only=True,
                              **FACTS),
}
