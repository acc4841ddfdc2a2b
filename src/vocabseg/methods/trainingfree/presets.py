"""The training-free methods' zoo entries: each method on CLIP ViT-B/16 (OpenAI) and
a tiny preset for tests. Any open_clip ViT works through ``clip_arch`` / ``clip_weights``."""
from __future__ import annotations

from ...backbones.clip import create_clip
from ...spec import ModelSpec, preset
from .model import TrainingFreeCLIP
from .settings import METHODS, PUBLISHED, TINY


def build(method: str, clip_arch: str = "ViT-B-16", clip_weights: str | None = "openai",
          quick_gelu: bool | None = None, gaussian_std: float = 5.0, dataset: str | None = None,
          **settings) -> TrainingFreeCLIP:
    """``method`` over open_clip ``clip_arch`` with ``clip_weights`` (an open_clip
    tag or file; None = random init). ``settings`` override the method's defaults
    (short_side, max_side, mode, window, stride, logit_scale, prob_thd, area_thd);
    ``dataset`` applies a benchmark's published settings (``set_dataset``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    unknown = set(settings) - set(METHODS[method])
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; expected some of {sorted(METHODS[method])}")
    clip, tokenizer, identity = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu)
    model = TrainingFreeCLIP(clip, tokenizer, identity, method, gaussian_std, settings).eval()
    if dataset is not None:
        model.set_dataset(dataset)
    return model


# A weights file is CLIP weights (no converter); the published protocol names classes as the SCLIP family does,
# ClearCLIP with its own lists where they differ (VOC-21, VOC-20, COCO-Object: data/vocab/*.clearclip.txt).
FACTS = dict(family="maskclip", needs_clip=True)
CONVENTIONS = {"maskclip": "tf", "sclip": "tf", "clearclip": "clearclip", "naclip": "tf"}
TITLES = {"maskclip": "MaskCLIP", "sclip": "SCLIP", "clearclip": "ClearCLIP", "naclip": "NACLIP"}
PRESETS = {}
for _m, _title in TITLES.items():
    PRESETS[f"{_m}-vit-b16"] = ModelSpec(
        f"{_m}-vit-b16", build=preset(f"{_m}-vit-b16", build, method=_m),
        description=f"{_title} (training-free) on CLIP ViT-B/16 (OpenAI); any open_clip ViT via "
                    "clip_arch=, clip_weights=",
        clip=("ViT-B-16", "openai"), published=dict(PUBLISHED[_m]), convention=CONVENTIONS[_m], **FACTS)
    PRESETS[f"{_m}-tiny"] = ModelSpec(
        f"{_m}-tiny", build=preset(f"{_m}-tiny", build, method=_m, clip_arch="tiny-vit", clip_weights=None, **TINY),
        description=f"tiny random {_title} for tests", clip=("tiny-vit", None), test_only=True,
        convention=CONVENTIONS[_m], **FACTS)
