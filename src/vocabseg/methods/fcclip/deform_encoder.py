"""Deformable-attention transformer encoder over multi-scale feature maps
(Deformable DETR's encoder as Mask2Former's pixel decoder uses it)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ms_deform_attn import MSDeformAttn


def reference_points(shapes, device=None) -> torch.Tensor:
    """Centre of every position of every level, normalised to 0..1:
    [1, S, L, 2] (x, y), the same point repeated for each of the L levels
    (no padding mask, so every level covers the whole image)."""
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                indexing="ij")
        refs.append(torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1))
    ref = torch.cat(refs, 0)[None]
    return ref[:, :, None].expand(-1, -1, len(shapes), -1)


class DeformEncoderLayer(nn.Module):
    """src <- norm1(src + MSDeformAttn(src + pos, ref, src)); src <- norm2(src + FFN(src)).
    ReLU FFN, post-norm, no dropout."""

    def __init__(self, dim: int = 256, ffn: int = 1024, levels: int = 3, heads: int = 8, points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformEncoder(nn.Module):
    """``num_layers`` DeformEncoderLayers over the flattened levels.
    forward(src [B, S, C], pos [B, S, C] (level embedding included), shapes) -> [B, S, C]."""

    def __init__(self, num_layers: int, **layer_kw):
        super().__init__()
        self.layers = nn.ModuleList(DeformEncoderLayer(**layer_kw) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, shapes) -> torch.Tensor:
        ref = reference_points(shapes, src.device).to(src.dtype).expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        return src
