"""Sine positional encoding of a 2D feature map (DETR / Mask2Former)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class PositionEmbeddingSine(nn.Module):
    """[B, C, H, W] (only the shape is read) -> [B, 2 * num_feats, H, W].

    Channels are (y, x) halves, each interleaving sin / cos at frequencies
    ``temperature ** (2 * (i // 2) / num_feats)``. With ``normalize`` the
    1-based row / column index is divided by the last one (+1e-6) and
    multiplied by ``scale`` (2 pi), so the encoding does not depend on size.
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000, normalize: bool = True,
                 scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale needs normalize=True")
        self.num_feats, self.temperature, self.normalize = num_feats, temperature, normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ones = torch.ones((b, h, w), dtype=torch.float32, device=x.device)
        y = ones.cumsum(1)
        xx = ones.cumsum(2)
        if self.normalize:
            y = y / (y[:, -1:, :] + 1e-6) * self.scale
            xx = xx / (xx[:, :, -1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        px = xx[..., None] / dim_t
        py = y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)
