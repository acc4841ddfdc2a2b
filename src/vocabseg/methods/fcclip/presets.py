"""FC-CLIP's zoo entries: the published ConvNeXt-L model and a tiny preset for tests.
Other ConvNeXt CLIPs (``model.CLIP_VARIANTS``) have no published checkpoint: train
one with configs/fcclip-convnext-l.yaml and model overrides ``clip_arch`` / ``clip_weights``."""
from __future__ import annotations

from ...spec import ModelSpec, WeightSource, preset
from .convert import load_published
from .model import FCCLIP

# Google Drive file of the published ConvNeXt-L checkpoint (README of bytedance/fc-clip).
GDRIVE_L = "1-91PIns86vyNaL3CzMmDD39zKGnPMtvj"
DECODER = dict(num_queries=250, num_layers=9)
TINY = dict(pixel=dict(dim=32, mask_dim=32, enc_layers=1, heads=4, points=2, ffn=64, groups=8),
            decoder=dict(dim=32, num_queries=12, heads=4, ffn=64, num_layers=3, mask_dim=32),
            train_points=24 * 24, image_size=64, resolution=(128, 256))
PUBLISHED_L = {"ade-panoptic:pq": 26.8, "ade-panoptic:ap": 16.8, "ade150": 34.1, "cityscapes:pq": 44.0,
               "cityscapes:ap": 26.8, "cityscapes": 56.2, "mapillary:pq": 18.3, "mapillary": 27.8,
               "ade847": 14.8, "pc59": 58.4, "pc459": 18.2, "voc21": 81.8, "voc20": 95.4,
               "coco-panoptic:pq": 54.4, "coco-panoptic:ap": 44.6, "coco-panoptic": 63.7}
# The published file holds no text tower: CLIP weights are fetched too.
FACTS = dict(family="fcclip", convention="fcclip", converter=load_published, needs_clip=True,
             bench_vocabulary="ade150:fcclip", text_vocabularies=("ade150:fcclip", "ade847:fcclip"))

build_fcclip_convnext_l = preset("fcclip-convnext-l", FCCLIP, clip_arch="convnext_large_d_320", decoder=DECODER)
build_fcclip_tiny = preset("fcclip-tiny", FCCLIP, clip_arch="tiny-convnext", **TINY)

PRESETS = {
    "fcclip-convnext-l": ModelSpec(
        "fcclip-convnext-l", build=build_fcclip_convnext_l,
        description="FC-CLIP with frozen ConvNeXt-L CLIP (LAION-2B, 320 px), trained on COCO panoptic",
        weights=WeightSource(filename="fcclip_cocopan.pth",
                             url=f"https://drive.usercontent.google.com/download?id={GDRIVE_L}"
                                 "&export=download&confirm=t"),
        clip=("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"), published=PUBLISHED_L, **FACTS),
    "fcclip-tiny": ModelSpec("fcclip-tiny", build=build_fcclip_tiny, description="tiny random FC-CLIP for tests",
                             clip=("tiny-convnext", None), test_only=True, **FACTS),
}
