"""Mask2Former's multi-scale deformable-attention pixel decoder (FC-CLIP uses it as is).

Inputs res2..res5 (strides 4..32). res3..res5 are projected to ``dim`` channels
(1x1 conv + GroupNorm(32)), flattened together with sine positions plus a
learnable level embedding, and refined by ``enc_layers`` deformable encoder
layers. One FPN step brings res2 in: lateral 1x1 conv + GN, plus the bilinearly
upsampled stride-8 output, then 3x3 conv + GN + ReLU. A 1x1 conv makes the
stride-4 ``mask_features``. Runs in fp32 (autocast off).

forward(features) -> (mask_features [B, mask_dim, H/4, W/4],
                      multi_scale [stride 32, 16, 8 maps, each [B, dim, h, w]])
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...model import Fp32Module
from .conv import ConvNorm
from .deform_encoder import DeformEncoder
from .position import PositionEmbeddingSine


class PixelDecoder(Fp32Module):
    def __init__(self, in_channels: tuple[int, int, int, int], dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, heads: int = 8, points: int = 4, ffn: int = 1024, groups: int = 32):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the pixel decoder takes res2..res5 (4 channel counts), got {in_channels}")
        self.num_levels = 3
        # res5, res4, res3 (low to high resolution), as the published module
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, kernel_size=1), nn.GroupNorm(groups, dim))
            for c in reversed(in_channels[1:]))
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim))
        self.encoder = DeformEncoder(enc_layers, dim=dim, ffn=ffn, levels=self.num_levels, heads=heads,
                                     points=points)
        self.pe = PositionEmbeddingSine(dim // 2, normalize=True)
        self.lateral = ConvNorm(in_channels[0], dim, 1, groups)
        self.output = ConvNorm(dim, dim, 3, groups, activation=F.relu)
        self.mask_features = nn.Conv2d(dim, mask_dim, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    @torch.autocast("cuda", enabled=False)
    @torch.autocast("cpu", enabled=False)
    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos, shapes = [], [], []
        for lvl, name in enumerate(("res5", "res4", "res3")):
            x = features[name].float()
            y = self.input_proj[lvl](x)
            shapes.append(tuple(y.shape[-2:]))
            srcs.append(y.flatten(2).transpose(1, 2))
            pos.append(self.pe(x).flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        memory = self.encoder(torch.cat(srcs, 1), torch.cat(pos, 1), shapes)
        b = memory.shape[0]
        maps = [z.transpose(1, 2).reshape(b, -1, h, w)
                for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]
        lat = self.lateral(features["res2"].float())
        top = F.interpolate(maps[-1], size=lat.shape[-2:], mode="bilinear", align_corners=False)
        fine = self.output(lat + top)
        return self.mask_features(fine), maps
