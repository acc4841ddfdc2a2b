"""open_clip ViT as a token backbone.

``ClipViT`` wraps an open_clip ``VisionTransformer`` (weights stay where open_clip
put them, so checkpoints keep their key names) and exposes the pieces dense
methods need: patch embedding with the positional embedding resized to any
grid, tokens after any block, a block run with an additive attention mask, the
per-head q / k / v of a block, the ``ln_post`` + ``proj`` head, and SAN's
attention-bias injection (``sos_attn_mask`` / ``ClipViT.forward_sos``): extra
[SOS] tokens that copy the class token and attend to the patches only through a
given bias, while CLS and patches run as in plain CLIP.

Token layout is batch-first: [B, 1 + h*w, C], class token first.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1,
                     mode: str = "bicubic") -> torch.Tensor:
    """[P + H0*W0, C] -> [P + h*w, C]: the grid part resized (align_corners=False),
    the ``num_prefix`` leading rows (class token) kept."""
    prefix, body = pos[:num_prefix], pos[num_prefix:]
    n = body.shape[0]
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"positional embedding has {n} grid rows, not a square")
    if (side, side) == tuple(grid):
        return pos
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    body = F.interpolate(body.float(), size=tuple(grid), mode=mode, align_corners=False).to(pos.dtype)
    body = body.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([prefix, body], dim=0)


def block_qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of an open_clip ``ResidualAttentionBlock`` for input tokens
    ``x`` [B, N, C] (``ln_1`` applied here): each [B, heads, N, C/heads], q not scaled."""
    attn = block.attn
    y = block.ln_1(x)
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    b, n, _ = qkv.shape
    qkv = qkv.view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] attention output -> [B, N, C] through the block's out_proj."""
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    return block.attn.out_proj(out)


def block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip block on [B, N, C] with an optional additive float mask
    broadcastable to [B, heads, N, N]; equals the block's own forward."""
    q, k, v = block_qkv(block, x)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x + block.ls_1(merge_heads(block, out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


SOS_BLOCKED = -100.0   # the additive mask value SAN uses for "does not attend"


def sos_attn_mask(bias: torch.Tensor) -> torch.Tensor:
    """Additive attention mask for the sequence [SOS x Q, CLS, patches].

    ``bias`` [B, heads, Q, L] (per-head bias of every SOS token on the L
    patches) -> [B, heads, Q+1+L, Q+1+L], rows = queries, columns = keys:
    every SOS column is -100 except each SOS token's own diagonal entry (0);
    SOS -> CLS is -100; SOS -> patch carries ``bias``; CLS and patches attend
    to CLS and patches with 0, exactly as in plain CLIP (they see the SOS
    tokens only through exp(-100) ~ 4e-44).
    """
    b, h, q, n = bias.shape
    size = q + 1 + n
    mask = bias.new_zeros(size, size)
    mask[:, :q] = SOS_BLOCKED
    idx = torch.arange(q, device=bias.device)
    mask[idx, idx] = 0.0
    mask[:q, q] = SOS_BLOCKED
    mask = mask.expand(b, h, size, size).clone()
    mask[:, :, :q, q + 1:] = bias
    return mask


class ClipViT(nn.Module):
    """Dense-feature view of an open_clip ``VisionTransformer``."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.patch_size = visual.conv1.kernel_size[0]
        self.width = visual.conv1.out_channels
        self.heads = visual.transformer.resblocks[0].attn.num_heads
        self.output_dim = visual.proj.shape[1] if visual.proj is not None else self.width

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images [B, 3, H, W] -> tokens after ``ln_pre`` [B, 1+h*w, C], (h, w)."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_pos_embed(v.positional_embedding, grid).to(x.dtype)
        return v.ln_pre(x), grid

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None,
                       collect: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run blocks ``start..end-1``. ``collect`` holds feature indices to keep:
        index i = tokens after block i (1-based), index 0 = the input tokens."""
        end = self.num_layers if end is None else end
        feats = {}
        if 0 in collect and start == 0:
            feats[0] = x
        for i in range(start, end):
            x = self.blocks[i](x)
            if i + 1 in collect:
                feats[i + 1] = x
        return x, feats

    def forward_sos(self, x: torch.Tensor, start: int, bias: torch.Tensor) -> torch.Tensor:
        """Attention-bias injection (SAN's recognition head without ``ln_post``).

        ``x`` [B, 1+L, C] tokens after block ``start`` (class token first),
        ``bias`` [B, heads, Q, L] -> [B, Q, C]: Q copies of the class token run
        through blocks ``start..`` with ``sos_attn_mask(bias)`` next to CLS and
        the patches, and are returned after the last block.
        """
        q = bias.shape[2]
        if bias.shape[1] != self.heads or bias.shape[3] != x.shape[1] - 1:
            raise ValueError(f"bias must be [B, {self.heads}, Q, {x.shape[1] - 1}], got {tuple(bias.shape)}")
        mask = sos_attn_mask(bias).to(x.dtype)
        y = torch.cat([x[:, :1].expand(-1, q, -1), x], dim=1)
        for block in self.blocks[start:]:
            y = block_forward(block, y, mask)
        return y[:, :q]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: [..., C] -> [..., D]."""
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class-token embedding [B, D], as open_clip's ``encode_image``."""
        x, _ = self.embed(images)
        x, _ = self.forward_blocks(x)
        return self.head(x[:, 0])
