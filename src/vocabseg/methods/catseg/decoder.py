"""CAT-Seg's upsampling decoder: two ``Up`` stages and a 3x3 head turn each
class's aggregated cost [C, h, w] into one logit map [4h, 4w].

    Up(x, g) = DoubleConv(cat[ConvT_k2s2(x), g])       g: projected CLIP guidance
    DoubleConv = [Conv3x3 (no bias), GroupNorm(C / 16), ReLU] x 2

Every class map is decoded on its own, so the class axis is cut into chunks
(``chunk`` maps at a time) to bound memory; the numbers do not change.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class DoubleConv(nn.Module):
    """Two [Conv3x3 without bias, GroupNorm(out / 16 groups), ReLU]; state-dict keys
    ``double_conv.{0,1,3,4}`` as published."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(cout // 16, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(cout // 16, cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """x [M, cin, h, w], guidance [M / T, g, 2h, 2w] (one per image, shared by its T
    class maps) -> [M, cout, 2h, 2w]."""

    def __init__(self, cin: int, cout: int, guidance: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin - guidance, kernel_size=2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if guidance is not None:
            x = torch.cat([x, guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)], dim=1)
        return self.conv(x)


def decode(up1: Up, up2: Up, head: nn.Conv2d, x: torch.Tensor, guidance: list, chunk: int = 64) -> torch.Tensor:
    """x [B, C, T, h, w] aggregated cost, guidance [g1 [B, *, 2h, 2w], g2 [B, *, 4h, 4w]]
    -> logits [B, T, 4h, 4w], ``chunk`` class maps of one image at a time."""
    b, c, t, h, w = x.shape
    out = []
    for i in range(b):
        xi = x[i].transpose(0, 1)                                       # [T, C, h, w]
        g1, g2 = guidance[0][i:i + 1], guidance[1][i:i + 1]
        parts = [head(up2(up1(xi[s:s + chunk], g1), g2)) for s in range(0, t, chunk)]
        out.append(torch.cat(parts)[:, 0])
    return torch.stack(out)
