"""Frozen open_clip ConvNeXt as a multi-scale backbone (FC-CLIP).

open_clip wraps a timm ConvNeXt as ``visual.trunk`` (stem, 4 stages,
``norm_pre``, classifier ``head`` = global pool + LayerNorm2d with no fc) and
adds ``visual.head`` (Linear or MLP) that projects into the joint space.

``ClipConvNeXt(clip).features(images)`` -> dict of
    ``res2`` .. ``res5``  [B, C_i, H/4 .. H/32, W/4 .. W/32] (stages 0..3)
    ``clip_dense``        [B, C_5, H/32, W/32] (res5 after ``norm_pre``)
``pool(dense, mask_logits)`` averages the dense feature inside each binarised
mask (logit > 0) and ``embed(pooled)`` sends the result through the trunk's
head norm and ``visual.head`` -> [B, Q, D] in the CLIP text space.

The wrapper holds no weights of its own: it is a view on ``clip.visual``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import speed
from .clip import text_dim

STRIDES = (4, 8, 16, 32)   # of res2..res5; channels come from timm's feature_info


def mask_pool(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` [B, C, H, W] inside each mask of ``mask_logits``
    [B, Q, h, w] (bilinearly resized to H, W when needed, then binarised at 0)
    -> [B, Q, C]. Empty masks give ~0 (denominator + 1e-8). No gradient flows
    into the masks."""
    if mask_logits.shape[-2:] != features.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        mask = (mask_logits.detach() > 0).to(features.dtype)
        denom = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", features, mask / denom)


class ClipConvNeXt(nn.Module):
    """Multi-scale view of an open_clip ConvNeXt CLIP (``clip.visual.trunk`` is timm's)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        visual = clip.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "stages") or len(trunk.stages) != 4:
            raise ValueError("ClipConvNeXt needs an open_clip timm ConvNeXt (visual.trunk with 4 stages)")
        self.__dict__["visual"] = visual       # a view: no second copy of the weights in state_dict
        self.channels = tuple(int(f["num_chs"]) for f in trunk.feature_info)
        self.embed_dim = text_dim(clip)

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    @property
    def dense_channels(self) -> int:
        return self.channels[-1]

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images [B, 3, H, W] (H, W multiples of 32) -> res2..res5 and clip_dense."""
        return (self.fast_features if speed.fast() else self.plain_features)(images)

    def plain_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """res2..res5 [B, C_i, H/2^i, W/2^i] and clip_dense [B, C_5, H/32, W/32], ``images`` in their own layout."""
        out = {}
        x = self.trunk.stem(images)
        for i, stage in enumerate(self.trunk.stages):
            x = stage(x)
            out[f"res{i + 2}"] = x.contiguous()
        out["clip_dense"] = self.trunk.norm_pre(x).contiguous()
        return out

    def fast_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``plain_features`` run channels-last: the stem's output is too, and timm's NHWC permutes become free."""
        return self.plain_features(images.contiguous(memory_format=torch.channels_last))

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, Q, C] pooled dense features -> [B, Q, D] (head norm + projection, not normalised)."""
        b, q, c = pooled.shape
        x = self.trunk.head(pooled.reshape(b * q, c, 1, 1))    # global pool of 1x1, LayerNorm2d, flatten
        x = self.visual.head(x)
        return x.view(b, q, x.shape[-1])

    def pooled_embeddings(self, dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """Mask-pooled CLIP embeddings [B, Q, D] of ``mask_logits`` [B, Q, h, w]."""
        return self.embed(mask_pool(dense, mask_logits))
