"""open_clip ViT as a token backbone.

``ClipViT`` wraps an open_clip ``VisionTransformer`` (weights stay where open_clip
put them, so checkpoints keep their key names) and exposes the pieces dense
methods need: patch embedding with the positional embedding resized to any
grid, tokens after any block, a block run with an additive attention mask, the
per-head q / k / v of a block, the ``ln_post`` + ``proj`` head, and SAN's
attention-bias injection (``sos_attn_mask`` / ``ClipViT.forward_sos``): extra
[SOS] tokens that copy the class token and attend to the patches only through a
given bias, while CLS and patches run as in plain CLIP; and a block whose
attention weights a model replaces (``block_with_attention``: the training-free
methods' last block), with DINO-style position resizing (``pos_offset``).

Token layout is batch-first: [B, 1 + h*w, C], class token first.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from .. import speed


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1,
                     mode: str = "bicubic", offset: float | None = None) -> torch.Tensor:
    """[P + H0*W0, C] -> [P + h*w, C]: the grid part resized (align_corners=False),
    the ``num_prefix`` leading rows (class token) kept.

    ``offset`` None resizes to ``grid`` exactly (sampling scale h / H0). A number
    gives DINO's variant, which the training-free CLIP repositories (SCLIP,
    ClearCLIP, NACLIP) use: ``scale_factor=(h + offset) / H0`` with that scale
    also used to place the samples (``recompute_scale_factor=False``), so the
    output has h rows but samples slightly different positions."""
    prefix, body = pos[:num_prefix], pos[num_prefix:]
    n = body.shape[0]
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"positional embedding has {n} grid rows, not a square")
    if (side, side) == tuple(grid):
        return pos
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if offset is None:
        body = F.interpolate(body, size=tuple(grid), mode=mode, align_corners=False)
    else:
        scale = ((grid[0] + offset) / side, (grid[1] + offset) / side)
        body = F.interpolate(body, scale_factor=scale, mode=mode, align_corners=False, recompute_scale_factor=False)
        if tuple(body.shape[-2:]) != tuple(grid):
            raise ValueError(f"offset {offset} resizes the {side}x{side} grid to {tuple(body.shape[-2:])}, not {grid}")
    body = body.to(pos.dtype)
    body = body.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([prefix, body], dim=0)


def in_proj_weight(attn: nn.MultiheadAttention) -> torch.Tensor:
    """[3C, C] packed q / k / v projection of an attention layer, also when it keeps them
    as separate ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` (CAT-Seg's CLIP)."""
    if attn.in_proj_weight is not None:
        return attn.in_proj_weight
    return torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight], dim=0)


def block_qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of an open_clip ``ResidualAttentionBlock`` for input tokens
    ``x`` [B, N, C] (``ln_1`` applied here): each [B, heads, N, C/heads], q not scaled."""
    attn = block.attn
    y = block.ln_1(x)
    qkv = speed.linear(y, in_proj_weight(attn), attn.in_proj_bias)
    b, n, _ = qkv.shape
    qkv = qkv.view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] attention output -> [B, N, C] through the block's out_proj."""
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    return speed.linear(out, block.attn.out_proj.weight, block.attn.out_proj.bias)


def block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip block on [B, N, C] with an optional additive float mask
    broadcastable to [B, heads, N, N]; equals the block's own forward."""
    q, k, v = block_qkv(block, x)
    out = speed.attention(q, k, v, attn_mask=attn_mask)
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


def plain_sos(blocks, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SOS outputs [B, Q, C] of [SOS x Q, CLS, patches] run through ``blocks`` with ``sos_attn_mask(bias)``.

    ``x`` [B, 1+L, C] CLS + patch tokens entering ``blocks``, ``bias`` [B, heads, Q, L];
    the Q SOS tokens enter as copies of CLS."""
    mask = sos_attn_mask(bias).to(x.dtype)
    q = bias.shape[2]
    y = torch.cat([x[:, :1].expand(-1, q, -1), x], dim=1)
    for block in blocks:
        y = block_forward(block, y, mask)
    return y[:, :q]


def fast_sos(blocks, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``plain_sos`` computed without the blocked entries of ``sos_attn_mask``.

    ``x`` [B, 1+L, C] CLS + patch tokens entering ``blocks``, ``bias`` [B, heads, Q, L]
    -> SOS outputs [B, Q, C] after the last block. Equal to running [SOS x Q, CLS,
    patches] with ``sos_attn_mask``: a -100 entry weighs exp(-100) ~ 4e-44 against
    the row's largest logit, below float32 resolution unless the blocked logit
    exceeds the row's maximum by ~80, so

    * CLS and patches run as plain CLIP blocks (they see no SOS token), and in the
      last block only their keys and values are needed (the SOS rows read them);
    * each SOS row attends to [itself, patches] with the bias on the patches: a
      [Q, 1 + L] attention instead of the [Q+1+L]^2 masked one;
    * the Q SOS tokens enter as copies of CLS: their first ``ln_1`` and q/k/v are
      computed once.
    """
    bias = bias.to(x.dtype)
    b, heads, q, n = bias.shape
    c = x.shape[-1]
    d = c // heads
    sos = None
    for i, block in enumerate(blocks):
        attn = block.attn
        if i == len(blocks) - 1:     # last block: the patches' keys and values only
            kv = speed.linear(block.ln_1(x[:, 1:]), in_proj_weight(attn)[c:], attn.in_proj_bias[c:])
            kp, vp = kv.view(b, n, 2, heads, d).permute(2, 0, 3, 1, 4)                  # [B, h, L, d]
        else:                        # plain CLIP block on CLS + patches, keeping k and v
            qx, kx, vx = block_qkv(block, x)
            kp, vp = kx[:, :, 1:], vx[:, :, 1:]
            out = speed.attention(qx, kx, vx)
        src = x[:, :1] if sos is None else sos                                           # [B, 1 or Q, C]
        qs, ks, vs = block_qkv(block, src)                                               # [B, h, 1 or Q, d]
        logits = torch.cat([(qs * ks).sum(-1, keepdim=True), qs @ kp.transpose(-1, -2)], dim=-1) * d ** -0.5
        logits = torch.cat([logits[..., :1].expand(b, heads, q, 1), logits[..., 1:] + bias], dim=-1)
        w = logits.softmax(-1)
        y = src + block.ls_1(merge_heads(block, w[..., :1] * vs + w[..., 1:] @ vp))     # [B, Q, C]
        sos = y + block.ls_2(block.mlp(block.ln_2(y)))
        if i < len(blocks) - 1:
            x = x + block.ls_1(merge_heads(block, out))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return sos


def block_with_attention(block: nn.Module, x: torch.Tensor, attention, residual: bool = True,
                         ffn: bool = True) -> torch.Tensor:
    """One open_clip block on [B, N, C] whose attention weights are replaced.

    ``attention(q, k, v)`` gets the per-head q, k, v [B, heads, N, d] (``ln_1``
    applied, q not scaled) and returns weights [B, heads, N, N], or None for the
    identity (each token keeps its own value). The weighted values pass
    ``out_proj``; then, if ``residual``, the input is added (LayerScale kept) and,
    if also ``ffn``, the MLP branch. Without ``residual`` the block returns the
    attention output alone (no FFN)."""
    q, k, v = block_qkv(block, x)
    weights = attention(q, k, v)
    out = merge_heads(block, v if weights is None else weights @ v)
    if not residual:
        return out
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x))) if ffn else x


def _plain_block(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` with a plain ``nn.MultiheadAttention`` (what ``block_forward`` runs)."""
    return isinstance(getattr(block, "attn", None), nn.MultiheadAttention) and not hasattr(block, "ln_1_kv")


class ClipViT(nn.Module):
    """Dense-feature view of an open_clip ``VisionTransformer``.

    ``pos_offset`` selects how ``embed`` resizes the positional embedding to a
    new grid (see ``resize_pos_embed``; None = exact size)."""

    def __init__(self, visual: nn.Module, pos_offset: float | None = None):
        super().__init__()
        self.visual = visual
        self.pos_offset = pos_offset
        self.patch_size = visual.conv1.kernel_size[0]
        self.width = visual.conv1.out_channels
        self.heads = visual.transformer.resblocks[0].attn.num_heads
        self.output_dim = visual.proj.shape[1] if visual.proj is not None else self.width
        self.checkpointing = False      # forward_blocks recomputes each block's activations in backward

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
        x = x + resize_pos_embed(v.positional_embedding, grid, offset=self.pos_offset).to(x.dtype)
        return v.ln_pre(x), grid

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None,
                       collect: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run blocks ``start..end-1``. ``collect`` holds feature indices to keep:
        index i = tokens after block i (1-based), index 0 = the input tokens. With
        ``checkpointing`` (and gradients on) each block's activations are recomputed in the
        backward pass instead of kept (same values, less memory, one more block forward)."""
        end = self.num_layers if end is None else end
        feats = {}
        if 0 in collect and start == 0:
            feats[0] = x
        for i in range(start, end):   # fast path: our block_forward (SDPA, speed.linear) on open_clip's weights
            block = self.blocks[i]
            run = (lambda t, b=block: block_forward(b, t)) if speed.fast() and _plain_block(block) else block
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(run, x, use_reentrant=False)
            else:
                x = run(x)
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
        if bias.shape[1] != self.heads or bias.shape[3] != x.shape[1] - 1:
            raise ValueError(f"bias must be [B, {self.heads}, Q, {x.shape[1] - 1}], got {tuple(bias.shape)}")
        return (fast_sos if speed.fast() else plain_sos)(self.blocks[start:], x, bias)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: [..., C] -> [..., D]."""
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class-token embedding [B, D], as open_clip's ``encode_image``."""
        x, _ = self.embed(images)
        x, _ = self.forward_blocks(x)
        return self.head(x[:, 0])
