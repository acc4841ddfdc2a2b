"""Vision foundation models (VFM) for ProxyCLIP's proxy attention: timm ViTs by name.

ProxyCLIP (mc-lan/ProxyCLIP) loads its VFMs through ``torch.hub`` (facebookresearch/dino
``dino_vitb8``, facebookresearch/dinov2 ``dinov2_vitb14_reg``). We build the same
networks with timm and take the weights timm publishes on the Hugging Face Hub
(``timm/<name>``, the DINO / DINOv2 releases converted), or a local file in timm's
layout or in the torch.hub repositories' own layout (``load_vfm_state`` converts it
with timm's filter: DINOv2's register tokens and class position folded as timm keeps
them, ``mask_token`` dropped; DINO's layout is timm's).

``vfm_patch_features`` runs the ViT the way the hub code's ``get_intermediate_layers``
does: patch embedding, position embedding resized as that hub model does (bicubic;
DINO and DINOv2 without registers: scale factor (grid + 0.1) / side, no antialias;
DINOv2 with registers: to the grid size, antialiased — the hub builds those with
``interpolate_offset=0``, ``interpolate_antialias=True``), class and register tokens,
every block, the final norm, prefix tokens dropped -> [B, C, h, w].
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...convert import load_file, mismatch
from ...errors import CheckpointError, UnknownModel, WeightsNotFound
from ...files import vocabseg_home

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VFM:
    timm_name: str            # timm architecture.tag; weights from https://huggingface.co/timm/<timm_name>
    hub: str                  # the torch.hub entry point the published code loads (or our addition)
    published: bool           # one of ProxyCLIP's pairs
    pos_offset: float = 0.1   # position embedding resizing of the hub model (see vfm_patch_features)
    pos_antialias: bool = False


VFMS = {
    "dino-vitb8": VFM("vit_base_patch8_224.dino", "facebookresearch/dino dino_vitb8", True),
    "dino-vitb16": VFM("vit_base_patch16_224.dino", "facebookresearch/dino dino_vitb16", False),
    "dinov2-vitb14-reg": VFM("vit_base_patch14_reg4_dinov2.lvd142m", "facebookresearch/dinov2 dinov2_vitb14_reg",
                             True, pos_offset=0.0, pos_antialias=True),
    "dinov2-vitl14": VFM("vit_large_patch14_dinov2.lvd142m", "facebookresearch/dinov2 dinov2_vitl14", False),
}
TINY_VFM = "tiny-vfm"        # random 2-block ViT, patch 8, width 32 (tests)


def vfm_cache_dir() -> Path:
    return vocabseg_home() / "vfm"


def create_vfm(name: str, weights: str | None = "hub") -> tuple[nn.Module, str]:
    """(timm ViT, identity) for VFM ``name``. ``weights``: ``"hub"`` (timm's published
    weights, downloaded on first use), a local file (timm or torch.hub layout) or None
    (random init)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer
    if name == TINY_VFM:
        model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    elif name in VFMS:
        model = timm.create_model(VFMS[name].timm_name, pretrained=False, num_classes=0)
    else:
        raise UnknownModel(f"unknown VFM {name!r}; available: {', '.join([*VFMS, TINY_VFM])}")
    if weights is None:
        return model.eval(), f"{name}:random"
    if weights == "hub":
        if name == TINY_VFM:
            raise WeightsNotFound(f"{TINY_VFM} has no published weights (use vfm_weights=None)")
        path = fetch_vfm(name)
    elif os.path.isfile(weights):
        path = weights
    else:
        raise WeightsNotFound(f"VFM weights file not found: {weights}")
    load_vfm_state(model, load_file(path) if not str(path).endswith(".safetensors") else _safetensors(path), path)
    return model.eval(), f"{name}:file:{Path(path).name}"


def _safetensors(path) -> dict:
    from safetensors.torch import load_file as load_st
    try:
        return load_st(str(path), device="cpu")
    except Exception:
        raise CheckpointError(f"cannot load {path}: a truncated or damaged safetensors file") from None


def fetch_vfm(name: str) -> Path:
    """Local path of timm's published weights of VFM ``name`` (downloaded on first use into
    ``$VOCABSEG_HOME/vfm``); offline and not downloaded: one line saying how to get them."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from ...hub import hub_endpoint, unreachable
    repo, cache = f"timm/{VFMS[name].timm_name}", str(vfm_cache_dir())
    cached = try_to_load_from_cache(repo, "model.safetensors", cache_dir=cache)
    if isinstance(cached, str):
        return Path(cached)
    how = (f"Download model.safetensors from https://huggingface.co/{repo} where you have network (it is cached "
           f"under {cache}), or pass a local file (timm or torch.hub {VFMS[name].hub} layout) with vfm_weights=PATH")
    why = unreachable(hub_endpoint())
    if why:
        raise WeightsNotFound(f"VFM weights {name} are not downloaded yet: {why}. {how}")
    try:
        return Path(hf_hub_download(repo, "model.safetensors", cache_dir=cache))
    except Exception as e:
        raise WeightsNotFound(f"could not get VFM weights {name} ({type(e).__name__}). {how}") from None


def load_vfm_state(model: nn.Module, sd: dict, source="state dict") -> None:
    """Load a VFM state dict in timm's layout or the torch.hub one (DINO, DINOv2) strictly;
    any missing, unexpected or mis-shaped key is one error naming it."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")} if isinstance(model.head, nn.Identity) else sd
    if "register_tokens" in sd or "mask_token" in sd:      # DINOv2's own layout
        sd = checkpoint_filter_fn(sd, model)
    problem = mismatch(model.state_dict(), sd)
    if problem:
        raise CheckpointError(f"{source} does not hold the VFM's weights" + problem)
    model.load_state_dict(sd)


def resize_vfm_pos(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int, offset: float = 0.1,
                   antialias: bool = False) -> torch.Tensor:
    """[P + S*S, C] -> [P + h*w, C] as the DINO / DINOv2 hub code: unchanged at its own size;
    else bicubic with scale factor (grid + offset) / S (``offset`` > 0) or to the grid size."""
    prefix, body = pos[:num_prefix], pos[num_prefix:]
    side = int(round(body.shape[0] ** 0.5))
    if (side, side) == tuple(grid):
        return pos
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if offset:
        scale = ((grid[0] + offset) / side, (grid[1] + offset) / side)
        body = F.interpolate(body, scale_factor=scale, mode="bicubic", antialias=antialias,
                             recompute_scale_factor=False)
    else:
        body = F.interpolate(body, size=tuple(grid), mode="bicubic", antialias=antialias)
    body = body.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([prefix, body], 0)


def vfm_patch_features(vit: nn.Module, images: torch.Tensor, pos_offset: float = 0.1,
                       pos_antialias: bool = False) -> torch.Tensor:
    """ImageNet-normalised images [B, 3, H, W] -> last-block patch tokens after the final
    norm [B, C, H // p, W // p] (class and register tokens dropped)."""
    x = vit.patch_embed.proj(images.to(vit.patch_embed.proj.weight.dtype))
    b, c, h, w = x.shape
    x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
    prefix = [vit.cls_token.expand(b, -1, -1)] if vit.cls_token is not None else []
    regs = [vit.reg_token.expand(b, -1, -1)] if getattr(vit, "reg_token", None) is not None else []
    pos = vit.pos_embed[0]
    if vit.no_embed_class:   # timm's DINOv2: the position embedding covers the patches only
        x = x + resize_vfm_pos(pos, (h, w), 0, pos_offset, pos_antialias).to(x.dtype)
        x = torch.cat(prefix + regs + [x], 1)
    else:
        x = torch.cat(prefix + [x], 1) + resize_vfm_pos(pos, (h, w), len(prefix), pos_offset, pos_antialias).to(x.dtype)
        x = torch.cat([x[:, :len(prefix)], *regs, x[:, len(prefix):]], 1)
    x = vit.norm_pre(x)
    for block in vit.blocks:
        x = block(x)
    x = vit.norm(x)[:, -h * w:]
    return x.transpose(1, 2).reshape(b, c, h, w)


def vfm_patch_size(vit: nn.Module) -> int:
    return vit.patch_embed.proj.kernel_size[0]
