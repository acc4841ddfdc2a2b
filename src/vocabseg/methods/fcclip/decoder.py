"""FC-CLIP's transformer decoder: Mask2Former's masked-attention decoder whose
class head is replaced by a mask-pooled embedding in the CLIP text space.

Q learnable queries (features + positions) attend to the pixel decoder's
stride 32 / 16 / 8 maps in turn (level embedding added, sine positions on the
keys); each layer is masked cross-attention -> self-attention -> FFN (post-norm).
A prediction head runs on the initial queries and after every layer:

    q      = LayerNorm(queries)                                  [B, Q, C]
    masks  = MLP3(q) . mask_features                             [B, Q, H/4, W/4]
    pooled = mean of mask_features inside (masks > 0)            [B, Q, C]
    emb    = MLP3(Linear(LayerNorm(pooled)) + q)                 [B, Q, D]

and the next layer may only attend where sigmoid(masks) >= 0.5 (resized to the
next level; a query whose mask is empty there attends everywhere). Class logits
are ``clamp(exp(logit_scale), max=100) * cos(emb, text)`` (``class_logits``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import speed
from ...backbones.convnext import mask_pool
from .attention import CrossAttentionBlock, FFNBlock, SelfAttentionBlock
from ...layers.mlp import MLP
from .position import PositionEmbeddingSine


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.cross_attn = CrossAttentionBlock(dim, heads)
        self.self_attn = SelfAttentionBlock(dim, heads)
        self.ffn = FFNBlock(dim, ffn)

    def forward(self, x, memory, pos, query_pos, mask):
        x = self.cross_attn(x, memory, pos, query_pos, mask)
        return self.ffn(self.self_attn(x, query_pos))


class MaskDecoder(nn.Module):
    """forward(multi_scale [3 maps [B, C, h, w], coarse first], mask_features [B, C, H, W])
    -> list of (class embeddings [B, Q, D], mask logits [B, Q, H, W]), one per
    prediction set (1 + num_layers), the last one final."""

    def __init__(self, dim: int = 256, num_queries: int = 250, heads: int = 8, ffn: int = 2048,
                 num_layers: int = 9, mask_dim: int = 256, embed_dim: int = 768):
        super().__init__()
        self.heads, self.num_levels = heads, 3
        self.pe = PositionEmbeddingSine(dim // 2, normalize=True)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(self.num_levels, dim)
        self.mask_embed = MLP(dim, dim, mask_dim, 3)
        self.pool_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.class_embed = MLP(dim, dim, embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def num_queries(self) -> int:
        return self.query_feat.num_embeddings

    def predict(self, x: torch.Tensor, mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction head -> (embedding [B, Q, D], mask logits [B, Q, H, W])."""
        q = self.norm(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        return self.class_embed(self.pool_proj(mask_pool(mask_features, masks)) + q), masks

    def attn_head(self, x: torch.Tensor, small_features: torch.Tensor) -> torch.Tensor:
        """The attention mask alone, from ``mask_features`` already resized to the
        attention level (fast path): bilinear resizing is linear, so resizing the
        [C, H, W] features and then taking query . pixel equals resizing the [Q, H, W]
        mask logits, at a fraction of the cost."""
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(self.norm(x)), small_features)
        return self._attn_mask(masks)

    def _attn_mask(self, small: torch.Tensor) -> torch.Tensor:
        attn = small.sigmoid().flatten(2) < 0.5
        return attn.unsqueeze(1).expand(-1, self.heads, -1, -1).flatten(0, 1).detach()

    def forward(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor, all_sets: bool = True):
        """-> [(embedding [B, Q, D], mask logits [B, Q, H, W])] of every prediction set (the
        initial queries and each layer), or with ``all_sets`` False (inference) of the last only."""
        if len(multi_scale) != self.num_levels:
            raise ValueError(f"the decoder takes {self.num_levels} feature maps, got {len(multi_scale)}")
        if all_sets:
            return self.every_set(multi_scale, mask_features)
        return (self.fast_last_set if speed.fast() else self.plain_last_set)(multi_scale, mask_features)

    def every_set(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor):
        """[(embedding, mask logits)] of every prediction set; each head's masks, resized, mask the next layer."""
        outputs = []

        def head(x, lvl):
            emb, masks = self.predict(x, mask_features)
            outputs.append((emb, masks))
            size = tuple(multi_scale[lvl].shape[-2:])
            return self._attn_mask(F.interpolate(masks, size=size, mode="bilinear", align_corners=False))

        x = self._layers(multi_scale, head)
        return outputs + [self.predict(x, mask_features)]

    def plain_last_set(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor):
        """[(embedding, mask logits)] of the last prediction set: the last entry of ``every_set``."""
        return self.every_set(multi_scale, mask_features)[-1:]

    def fast_last_set(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor):
        """``plain_last_set`` with the intermediate heads building just their attention masks (``attn_head``)."""
        small = [F.interpolate(mask_features, size=m.shape[-2:], mode="bilinear", align_corners=False)
                 for m in multi_scale]
        x = self._layers(multi_scale, lambda x, lvl: self.attn_head(x, small[lvl]))
        return [self.predict(x, mask_features)]

    def _layers(self, multi_scale: list[torch.Tensor], head) -> torch.Tensor:
        """Queries [B, Q, C] after every layer; before each one ``head(queries, level)`` gives
        its attention mask [B * heads, Q, h*w] (True = blocked) at that level."""
        srcs, pos, query_pos, x = self._inputs(multi_scale)
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            attn = head(x, lvl)
            attn = attn & ~attn.all(-1, keepdim=True)         # empty mask: attend everywhere
            x = layer(x, srcs[lvl], pos[lvl], query_pos, attn)
        return x

    def _inputs(self, multi_scale: list[torch.Tensor]):
        """(memory per level [B, h*w, C] + level embedding, sine positions, query positions, query features)."""
        b = multi_scale[0].shape[0]
        srcs, pos = [], []
        for i, x in enumerate(multi_scale):
            pos.append(self.pe(x).flatten(2).transpose(1, 2))
            srcs.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[i].view(1, 1, -1))
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        return srcs, pos, query_pos, self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)

    def class_logits(self, emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """``emb`` [B, Q, D], ``classifier`` [K, D] unit rows -> [B, Q, K] scaled cosines."""
        scale = self.logit_scale.exp().clamp(max=100)
        return scale * F.normalize(emb, dim=-1) @ classifier.t().to(emb.dtype)
