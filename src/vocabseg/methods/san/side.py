"""SAN's side adapter network: a small plain ViT (timm blocks) with learnable
queries that reads the full-resolution image, takes in frozen-CLIP features
through fusion layers, and predicts mask proposals plus an attention bias for
CLIP's recognition head.

Submodule names follow the published checkpoint (``side_adapter_network.*``):
``vit_model`` (a timm ``VisionTransformer`` without class token or final
norm: ``patch_embed.proj``, ``pos_embed``, ``blocks``), ``query_embed``,
``query_pos_embed``, ``fusion_layers.layer_<i>.input_proj.{0,1}``,
``mask_decoder.{query_mlp,pix_mlp,attn_mlp}.layers.<j>`` and
``mask_decoder.bias_scaling``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ... import speed
from ...backbones.vit import resize_pos_embed
from ...layers.mlp import MLP


@dataclass(frozen=True)
class SideConfig:
    """Side network hyperparameters (defaults: the published ViT-B/16 model).

    ``fusion_map`` maps side position (0 = after patch embedding, i = after
    block i) to the CLIP feature index fused there; ``deep_supervision`` lists
    the side blocks whose output is decoded (the last one is used at test time).
    """
    width: int = 240
    depth: int = 8
    heads: int = 6
    patch_size: int = 16
    mlp_ratio: float = 4.0
    image_size: int = 640          # pos_embed covers image_size / patch_size squared
    num_queries: int = 100
    fusion_map: dict = field(default_factory=lambda: {0: 0, 1: 3, 2: 6, 3: 9})
    deep_supervision: tuple = (7, 8)
    embed_channels: int = 256
    mlp_channels: int = 256
    mlp_layers: int = 3
    bias_heads: int = 12           # heads of CLIP's recognition blocks
    drop_path: float = 0.0


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [B, C, H, W] (eps 1e-6), biased variance."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class AddFusion(nn.Module):
    """CLIP feature map [B, C_clip, h, w] -> LayerNorm -> 1x1 conv to the side
    width -> bilinear resize to the side grid -> added to the side patch tokens."""

    def __init__(self, clip_width: int, side_width: int):
        super().__init__()
        self.input_proj = nn.Sequential(LayerNorm2d(clip_width), nn.Conv2d(clip_width, side_width, 1))
        nn.init.kaiming_uniform_(self.input_proj[1].weight, a=1)   # Caffe2 "Xavier" fill
        nn.init.zeros_(self.input_proj[1].bias)

    def forward(self, tokens: torch.Tensor, clip_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``tokens`` [B, h*w, C_side] patch tokens; returns the same shape."""
        y = F.interpolate(self.input_proj(clip_map), size=grid, mode="bilinear", align_corners=False)
        return tokens + y.permute(0, 2, 3, 1).reshape(tokens.shape)


class MaskDecoder(nn.Module):
    """Decoupled head: mask logits from query . pixel embeddings, and one
    attention-bias set from query . per-head pixel embeddings, rescaled by a
    learned ``Linear(1, 1)``."""

    def __init__(self, width: int, embed: int, hidden: int, num_layers: int, bias_heads: int):
        super().__init__()
        self.bias_heads = bias_heads
        self.query_mlp = MLP(width, hidden, embed, num_layers)
        self.pix_mlp = MLP(width, hidden, embed, num_layers, conv=True)
        self.attn_mlp = MLP(width, hidden, embed * bias_heads, num_layers, conv=True)
        self.bias_scaling = nn.Linear(1, 1)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [B, Q, C], ``x`` [B, C, h, w] -> mask logits [B, Q, h, w],
        attention bias [B, heads, Q, h, w]."""
        q = self.query_mlp(query)
        masks = torch.einsum("bqc,bchw->bqhw", q, self.pix_mlp(x))
        return masks, (self.fast_bias if speed.fast() else self.plain_bias)(q, x)

    def plain_bias(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scaled attention bias [B, heads, Q, h, w] of ``q`` [B, Q, E] (``query_mlp`` out), ``x`` [B, C, h, w]."""
        attn = self.attn_mlp(x)
        b, _, h, w = attn.shape
        bias = torch.einsum("bqc,bnchw->bnqhw", q, attn.reshape(b, self.bias_heads, -1, h, w))
        return self.bias_scaling(bias[..., None]).squeeze(-1)

    def fast_bias(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``plain_bias`` with the last 1x1 conv folded into the queries: q . (W z + w0) = (q W) . z + q . w0."""
        last = self.attn_mlp.layers[-1]
        z = self.attn_mlp.hidden(x)                                                 # [B, K, h, w]
        b, _, h, w = z.shape
        weight = last.weight.view(self.bias_heads, -1, z.shape[1])                  # [n, E, K]
        qw = torch.einsum("bqc,nck->bnqk", q, weight)
        offset = torch.einsum("bqc,nc->bnq", q, last.bias.view(self.bias_heads, -1))
        bias = (qw @ z.flatten(2).unsqueeze(1) + offset[..., None]).view(b, self.bias_heads, -1, h, w)
        scale = self.bias_scaling                                     # Linear(1, 1) as one multiply-add
        return torch.addcmul(scale.bias, bias, scale.weight[0, 0])


class SideAdapter(nn.Module):
    """Side adapter network; see the module docstring for names and layout."""

    def __init__(self, cfg: SideConfig, clip_width: int):
        super().__init__()
        self.cfg = cfg
        self.vit_model = VisionTransformer(
            img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.depth,
            num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, class_token=False, global_pool="", num_classes=0,
            final_norm=False, fc_norm=False, drop_path_rate=cfg.drop_path, dynamic_img_size=True)
        self.query_embed = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.width))
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{pos}": AddFusion(clip_width, cfg.width) for pos in sorted(cfg.fusion_map)})
        self.mask_decoder = MaskDecoder(cfg.width, cfg.embed_channels, cfg.mlp_channels, cfg.mlp_layers,
                                        cfg.bias_heads)

    @property
    def clip_indices(self) -> tuple[int, ...]:
        """CLIP feature indices the side network reads."""
        return tuple(sorted(self.cfg.fusion_map.values()))

    def forward(self, image: torch.Tensor, clip_maps: dict[int, torch.Tensor],
                decode_all: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``image`` normalised [B, 3, H, W]; ``clip_maps`` CLIP feature index ->
        [B, C_clip, h', w']. Returns (mask logits [B, Q, H/p, W/p], attention
        biases [B, heads, Q, H/p, W/p]) per decoded block: every block in
        ``deep_supervision`` when ``decode_all``, else only the last."""
        vit = self.vit_model
        x = vit.patch_embed.proj(image)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)                                   # [B, L, C]
        n = x.shape[1]
        pos = vit.pos_embed[0]
        if pos.shape[0] != n:   # as published: resized when the token count differs (not the grid shape)
            pos = resize_pos_embed(pos, grid, num_prefix=0)
        pos = pos[None]
        b = x.shape[0]
        pos = torch.cat([self.query_pos_embed.expand(b, -1, -1), pos.expand(b, -1, -1)], dim=1)
        x = torch.cat([self.query_embed.expand(b, -1, -1), x], dim=1) + pos
        x = vit.norm_pre(x)
        x = self._fuse(0, x, clip_maps, grid)
        keep = self.cfg.deep_supervision if decode_all else self.cfg.deep_supervision[-1:]
        outs = []
        for i, block in enumerate(vit.blocks, start=1):
            x = self._fuse(i, block(x), clip_maps, grid)
            if i in keep:
                query = x[:, :-n]
                pix = x[:, -n:].transpose(1, 2).reshape(b, -1, *grid)
                outs.append(self.mask_decoder(query, pix))
            if i < len(vit.blocks):
                x = x + pos
        return [m for m, _ in outs], [a for _, a in outs]

    def _fuse(self, pos: int, x: torch.Tensor, clip_maps: dict, grid: tuple[int, int]) -> torch.Tensor:
        if pos not in self.cfg.fusion_map:
            return x
        n = grid[0] * grid[1]
        fused = self.fusion_layers[f"layer_{pos}"](x[:, -n:], clip_maps[self.cfg.fusion_map[pos]], grid)
        return torch.cat([x[:, :-n], fused], dim=1)
