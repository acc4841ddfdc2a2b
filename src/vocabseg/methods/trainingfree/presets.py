"""The training-free methods' zoo entries: each method on CLIP ViT-B/16 (OpenAI) and
a tiny preset for tests. Any open_clip ViT works through ``clip_arch`` / ``clip_weights``."""
from __future__ import annotations

from ...backbones.clip import create_clip
from ...spec import ModelSpec, preset
from .model import TrainingFreeCLIP
from .proxyclip import BETA, GAMMA, ProxyCLIP
from .resclip import BASES, RCS_BLOCKS, ResCLIP
from .settings import METHODS, PUBLISHED, TINY
from .vfm import TINY_VFM, create_vfm


def build(method: str, clip_arch: str = "ViT-B-16", clip_weights: str | None = "openai",
          quick_gelu: bool | None = None, gaussian_std: float = 5.0, dataset: str | None = None,
          resclip: bool = False, rcs: bool = True, sfr: bool = True, rcs_blocks=RCS_BLOCKS,
          delete_same_entity: bool = True, **settings) -> TrainingFreeCLIP:
    """``method`` over open_clip ``clip_arch`` with ``clip_weights`` (an open_clip
    tag or file; None = random init). ``settings`` override the method's defaults
    (short_side, max_side, mode, window, stride, logit_scale, prob_thd, area_thd);
    ``dataset`` applies a benchmark's published settings (``set_dataset``).
    ``resclip``: ResCLIP on SCLIP / ClearCLIP / NACLIP, with RCS (``rcs``, blocks
    ``rcs_blocks``) and SFR (``sfr``) switchable, and its settings (also temp_thd,
    rcs_weights, sfr_weights)."""
    if method not in METHODS or method in ("proxyclip", "resclip"):
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(TITLES)}")
    if resclip and method not in BASES:
        raise ValueError(f"ResCLIP runs on {', '.join(BASES)}, not {method}")
    known = METHODS["resclip" if resclip else method]
    unknown = set(settings) - set(known)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; expected some of {sorted(known)}")
    clip, tokenizer, identity = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu)
    if resclip:
        model = ResCLIP(clip, tokenizer, identity, method, gaussian_std, settings, rcs, sfr, rcs_blocks,
                        delete_same_entity).eval()
    else:
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

# ResCLIP on each of its bases: "<base preset>+resclip" (tiny: RCS from blocks 1-2 of tiny-vit's 4)
for _m in BASES:
    for _size, _fixed in (("vit-b16", {}), ("tiny", dict(clip_arch="tiny-vit", clip_weights=None, **TINY,
                                                          rcs_blocks=(1, 2)))):
        _name = f"{_m}-{_size}+resclip"
        PRESETS[_name] = ModelSpec(
            _name, build=preset(_name, build, method=_m, resclip=True, **_fixed),
            description=(f"ResCLIP (RCS + SFR, training-free) on {TITLES[_m]}, CLIP ViT-B/16 (OpenAI)"
                         if _size != "tiny" else f"tiny random ResCLIP on {TITLES[_m]} for tests"),
            clip=("ViT-B-16", "openai") if _size != "tiny" else ("tiny-vit", None), test_only=_size == "tiny",
            published=dict(PUBLISHED[f"{_m}+resclip"]) if _size != "tiny" else {}, convention="tf", **FACTS)


def build_proxyclip(clip_arch: str = "ViT-B-16", clip_weights: str | None = "openai", vfm: str = "dino-vitb8",
                    vfm_weights: str | None = "auto", quick_gelu: bool | None = None, beta: float = BETA,
                    gamma: float = GAMMA, dataset: str | None = None, **settings) -> ProxyCLIP:
    """ProxyCLIP over open_clip ``clip_arch`` / ``clip_weights`` with VFM ``vfm`` (``vfm.VFMS``).
    ``vfm_weights``: ``"hub"`` (timm's published weights), a local file (timm or torch.hub
    layout), None (random) or ``"auto"`` (``"hub"``, None when ``clip_weights`` is None:
    every weight then comes from a checkpoint). ``settings`` as ``build``'s."""
    unknown = set(settings) - set(METHODS["proxyclip"])
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; expected some of {sorted(METHODS['proxyclip'])}")
    clip, tokenizer, identity = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu)
    if vfm_weights == "auto":
        vfm_weights = None if clip_weights is None else "hub"
    vit, _ = create_vfm(vfm, vfm_weights)
    model = ProxyCLIP(clip, tokenizer, identity, vit, vfm, beta, gamma, settings).eval()
    if dataset is not None:
        model.set_dataset(dataset)
    return model


# ProxyCLIP's pairs (configs/base_config.py: OpenAI ViT-B/16, ViT-L/14, LAION-2B ViT-H/14; hub dino_vitb8 and
# dinov2_vitb14_reg), and two of our own (DINO ViT-B/16, DINOv2 ViT-L/14 on CLIP ViT-B/16).
_CLIPS = {"vit-b16": ("ViT-B-16", "openai", "ViT-B/16 (OpenAI)"), "vit-l14": ("ViT-L-14", "openai", "ViT-L/14 (OpenAI)"),
          "vit-h14": ("ViT-H-14", "laion2b_s32b_b79k", "ViT-H/14 (LAION-2B)")}
_VFMS = {"": ("dino-vitb8", "DINO ViT-B/8"), "-dinov2": ("dinov2-vitb14-reg", "DINOv2 ViT-B/14 with registers")}
_PROXY = dict(family="proxyclip", needs_clip=True, convention="tf")
for _c, (_arch, _tag, _ctitle) in _CLIPS.items():
    for _suffix, (_vfm, _vtitle) in {**_VFMS, **({"-dinob16": ("dino-vitb16", "DINO ViT-B/16 (our addition)"),
                                                   "-dinov2l14": ("dinov2-vitl14", "DINOv2 ViT-L/14 (our addition)")}
                                                 if _c == "vit-b16" else {})}.items():
        _name = f"proxyclip-{_c}{_suffix}"
        PRESETS[_name] = ModelSpec(
            _name, build=preset(_name, build_proxyclip, clip_arch=_arch, clip_weights=_tag, vfm=_vfm),
            description=f"ProxyCLIP (training-free) on CLIP {_ctitle} with a {_vtitle} proxy",
            clip=(_arch, _tag), published=dict(PUBLISHED["proxyclip"]) if _name == "proxyclip-vit-b16" else {},
            **_PROXY)
PRESETS["proxyclip-tiny"] = ModelSpec(
    "proxyclip-tiny", build=preset("proxyclip-tiny", build_proxyclip, clip_arch="tiny-vit", clip_weights=None,
                                   vfm=TINY_VFM, vfm_weights=None, **TINY, pad_multiple=16),
    description="tiny random ProxyCLIP for tests", clip=("tiny-vit", None), test_only=True, **_PROXY)
