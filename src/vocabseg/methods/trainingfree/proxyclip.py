"""ProxyCLIP (Lan et al., ECCV 2024; mc-lan/ProxyCLIP): CLIP's last-block value
embeddings aggregated with attention computed from a frozen vision foundation
model's (VFM) patch features.

For a window (CLIP-normalised, zero-padded centred to a multiple of ``pad_multiple``):

1. the VFM sees the window un-normalised (CLIP mean / std) and re-normalised with
   ImageNet's: patch tokens after its last block and final norm, F [C, I*J];
2. proxy attention over the VFM grid, one matrix for every head:
   F̂ = F / ‖F‖ (per token), S = F̂ᵀF̂, S' = γ (S − β mean(S)) with mean(S) one scalar
   over the whole window's matrix, entries S' < 0 set to −inf, A = softmax(S') over
   keys (β 1.2, γ 3.0);
3. CLIP runs unchanged up to its last block; there only the values v of
   ``in_proj(ln_1(x))`` are used: each head's patch values are resized bilinearly
   (align_corners=False) from the CLIP grid to the VFM grid, weighted by A, merged by
   ``out_proj`` — no residual, no FFN, no class token — then ``ln_post`` and ``proj``.

The patch embeddings live on the VFM grid; their cosine maps are resized bilinearly
to the padded window and cut back (``classify``), averaged over windows and finalized
as the other training-free methods (softmax(40 cos), max over synonyms, ``prob_thd``).

Differences from the published code, none on its published path: the published code
runs in fp16 (here fp32, or ``--precision``); it takes the VFM grid as I x I from the
window height (square windows only; here I x J); its mean is over the batch (here per
image: it runs one image at a time); a row with every S' < 0 (all tokens alike, e.g.
a blank window) gives NaN there and keeps the token's own value here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.vit import ClipViT, block_qkv, merge_heads
from ...model import SegModel
from .model import DenseFeatures, TrainingFreeCLIP, _check_vit
from .settings import METHODS
from .vfm import IMAGENET_MEAN, IMAGENET_STD, VFM, VFMS, vfm_patch_features, vfm_patch_size
from ...backbones.clip import CLIP_MEAN, CLIP_STD

BETA, GAMMA = 1.2, 3.0


def proxy_attention(feats: torch.Tensor, beta: float = BETA, gamma: float = GAMMA) -> torch.Tensor:
    """VFM patch features [B, C, N] -> proxy attention [B, N, N] (rows sum to 1), in fp32
    whatever the features' precision: the threshold at 0 flips entries on bf16 rounding of the
    cosines (with the rest in bf16, argmax agreement with fp32 93.5 % against 97.6 % this way)."""
    with torch.autocast(feats.device.type, enabled=False):
        f = F.normalize(feats.float(), dim=1)
        s = f.transpose(1, 2) @ f                                        # [B, N, N] cosines
        s = (s - s.mean((1, 2), keepdim=True) * beta) * gamma
        keep = s >= 0
        keep = keep | (torch.eye(s.shape[-1], dtype=torch.bool, device=s.device) & ~keep.any(-1, keepdim=True))
        return s.masked_fill(~keep, float("-inf")).softmax(-1)


class ProxyCLIP(TrainingFreeCLIP):
    """ProxyCLIP over an open_clip ViT (``clip``) and a timm VFM (``vfm``, kept as a
    submodule: its weights are part of the model's state dict)."""

    def __init__(self, clip: nn.Module, tokenizer, identity: str, vfm: nn.Module, vfm_name: str,
                 beta: float = BETA, gamma: float = GAMMA, settings: dict | None = None):
        SegModel.__init__(self)
        _check_vit(clip)
        self.clip, self.tokenizer, self.clip_identity = clip, tokenizer, identity
        self.attach("vit", ClipViT(clip.visual, pos_offset=0.1))   # DINO-style position resizing, as published
        self.vfm, self.vfm_name = vfm, vfm_name
        self.method = self.settings_key = "proxyclip"
        self.beta, self.gamma = float(beta), float(gamma)
        self.residual, self.padding = False, "center"
        self.base_settings = {**METHODS["proxyclip"], **(settings or {})}
        self.dataset = None
        self._use_settings(self.base_settings)

    def _use_settings(self, s: dict) -> None:
        super()._use_settings(s)
        self.pad_multiple = int(s["pad_multiple"])

    @torch.no_grad()
    def vfm_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images [B, 3, H, W] -> VFM patch features [B, C, I, J]."""
        def stats(v):
            return torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        raw = images * stats(CLIP_STD) + stats(CLIP_MEAN)
        spec = VFMS.get(self.vfm_name, VFM("", "", False))
        return vfm_patch_features(self.vfm, (raw - stats(IMAGENET_MEAN)) / stats(IMAGENET_STD), spec.pos_offset,
                                  spec.pos_antialias)

    def dense_tokens(self, images: torch.Tensor, vfm_feats: torch.Tensor | None = None):
        """Normalised images [B, 3, H, W] -> patch tokens after ``ln_post`` / ``proj`` on the
        VFM grid [B, I*J, D], (I, J). ``vfm_feats`` [B, C, I, J]: given VFM features."""
        vit = self.vit
        feats = self.vfm_features(images) if vfm_feats is None else vfm_feats
        b, _, gi, gj = feats.shape
        x, grid = vit.embed(images)
        x, _ = vit.forward_blocks(x, 0, vit.num_layers - 1)
        last = vit.blocks[-1]
        _, _, v = block_qkv(last, x)                                     # [B, heads, 1 + h*w, d]
        heads, d = v.shape[1], v.shape[-1]
        v = v[:, :, 1:].reshape(b * heads, *grid, d).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=(gi, gj), mode="bilinear", align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(b, heads, gi * gj, d)
        attn = proxy_attention(feats.flatten(2), self.beta, self.gamma).to(v.dtype)
        out = merge_heads(last, attn[:, None] @ v)                       # same A for every head
        return vit.head(out), (gi, gj)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> DenseFeatures:
        h, w = images.shape[-2:]
        whole, m = self.protocol.mode == "whole", self.pad_multiple
        p = max(vfm_patch_size(self.vfm), self.vit.patch_size)
        if whole:    # the published whole-image path pads nothing (a side shorter than a patch: to one patch)
            ph, pw = max(0, p - h), max(0, p - w)
        else:        # compute_padsize(H, W, 56): centred zeros up to a multiple of 56
            ph, pw = (m - h % m) % m, (m - w % m) % m
        top, left = ph // 2, pw // 2
        if ph or pw:
            images = F.pad(images, (left, pw - left, top, ph - top))
        tokens, grid = self.dense_tokens(images)
        feats = F.normalize(tokens, dim=-1).transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        return DenseFeatures(feats, (h, w), tuple(images.shape[-2:]), (top, left), whole)
