"""SegCLIP's semantic group module: learnable centers gather patch tokens into regions.

``SemanticGroup`` takes the patch tokens after the first CLIP blocks, [B, N, C],
and returns L region tokens [B, L, C] together with the assignment of every patch
to a region (hard, one-hot over the L centers, and soft) as [B, L, N].

1. The L centers (truncated normal, std 0.02) attend to ``centers ⊕ patches``
   through ``cross_layers`` pre-LayerNorm cross-attention blocks (QuickGELU MLP).
2. Keys are the LayerNorm'd patches through a grouped 1×1 Conv1d (groups =
   heads, no bias), LayerNorm'd again; values the same conv without the second
   LayerNorm. Logits = centers · keys (plain dot product, no 1/√d), [B, L, N].
3. Assignment = Gumbel-softmax over the centers (dim 1), temperature 0.9, hard
   with the straight-through estimator; without noise (eval) the hard
   assignment is the argmax of the logits.
4. Region token = mean of its patches' values (count clamped at 1) + its center
   → LayerNorm → MLP C→4C→C (GELU) → QuickGELU (no residual).

Parameter names follow the published module, so the published checkpoint maps
onto it by prefix only. Unlike the published cross-attention (which handed
batch-first keys to a sequence-first attention and so mixed keys across images
at batch > 1), attention here is per image; at batch size 1 both agree.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from timm.layers import Mlp


def gumbel_assign(logits: torch.Tensor, tau: float = 0.9, dim: int = 1, noise: bool = True,
                  gumbels: torch.Tensor | None = None) -> torch.Tensor:
    """Hard one-hot assignment along ``dim`` with the straight-through gradient.

    With ``noise`` the soft assignment is softmax((logits + g) / tau) with g ~
    Gumbel(0, 1) (or the given ``gumbels``, same shape as ``logits``); without it
    (eval) it is softmax(logits) and the hard assignment is argmax(logits). The
    forward value is one-hot; the gradient is the soft assignment's.
    """
    if noise:
        if gumbels is None:
            gumbels = -torch.empty_like(logits).exponential_().log()
        soft = ((logits + gumbels) / tau).softmax(dim)
    else:
        soft = logits.softmax(dim)
    index = soft.argmax(dim, keepdim=True)
    hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


class CrossAttentionBlock(nn.Module):
    """q = q + Attn(ln_x(q), ln_k(kv), ln_k(kv)); q = q + MLP(ln_2(q)). Batch-first, per image."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_x = nn.LayerNorm(width)
        self.ln_k = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q [B, L, C], kv [B, M, C] -> [B, L, C]."""
        k = self.ln_k(kv)
        q = q + self.attn(self.ln_x(q), k, k, need_weights=False)[0]
        return q + self.mlp(self.ln_2(q))


class SemanticGroup(nn.Module):
    """Learnable-center grouping of patch tokens (see the module docstring)."""

    def __init__(self, width: int, num_centers: int = 8, heads: int = 12, cross_layers: int = 2, tau: float = 0.9):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by the number of heads {heads}")
        self.tau = tau
        self.norm = nn.LayerNorm(width)
        self.semantic_center = nn.Parameter(torch.empty(num_centers, width))
        self.cross_att = nn.Sequential(OrderedDict(
            [(str(i), CrossAttentionBlock(width, heads)) for i in range(cross_layers)]))
        self.cross_ln = nn.LayerNorm(width)
        self.k_conv = nn.Conv1d(width, width, kernel_size=1, groups=heads, bias=False)
        self.k_ln = nn.LayerNorm(width)
        self.v_conv = nn.Conv1d(width, width, kernel_size=1, groups=heads, bias=False)
        self.proj_o = nn.Sequential(OrderedDict([("ln", nn.LayerNorm(width)), ("mlp", Mlp(width, 4 * width, width)),
                                                 ("act", QuickGELU())]))
        self.reset_parameters()

    @property
    def num_centers(self) -> int:
        return self.semantic_center.shape[0]

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.semantic_center, std=0.02, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def centers(self, patches: torch.Tensor) -> torch.Tensor:
        """Centers after cross-attention and ``cross_ln``: [B, N, C] -> [B, L, C]."""
        q = self.semantic_center.to(patches.dtype).unsqueeze(0).expand(patches.shape[0], -1, -1)
        for block in self.cross_att:
            q = block(q, torch.cat([q, patches], dim=1))
        return self.cross_ln(q)

    def logits(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [B, L, N], values [B, N, C], centers [B, L, C]) for patches [B, N, C]."""
        centers = self.centers(patches)
        x = self.norm(patches).transpose(1, 2)                 # [B, C, N]
        keys = self.k_ln(self.k_conv(x).transpose(1, 2))        # [B, N, C]
        values = self.v_conv(x).transpose(1, 2)                 # [B, N, C]
        return torch.einsum("blc,bnc->bln", centers, keys), values, centers

    def forward(self, patches: torch.Tensor, noise: bool | None = None):
        """patches [B, N, C] -> (regions [B, L, C], hard [B, L, N], soft [B, L, N]).

        ``noise`` (default: ``self.training``) adds Gumbel noise to the hard
        assignment; ``soft`` is always the noise-free softmax over the centers.
        """
        noise = self.training if noise is None else noise
        logits, values, centers = self.logits(patches)
        hard = gumbel_assign(logits, self.tau, dim=1, noise=noise)
        soft = logits.softmax(dim=1)
        pooled = torch.einsum("bln,bnc->blc", hard, values)
        pooled = pooled / hard.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return self.proj_o(centers + pooled), hard, soft


def reconstruct_patches(layer: nn.Linear, regions: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """SegCLIP's reconstruct layer: region tokens back onto the (visible) patches.

    regions [B, L, C], hard assignment [B, L, N] -> [B, N, C]: the assignment
    of each patch is mixed by ``layer`` (Linear L→L), the regions weighted by it
    and summed, then QuickGELU.
    """
    mix = layer(hard.transpose(1, 2)).to(regions.dtype)    # [B, N, L]
    out = torch.einsum("blc,bnl->bnc", regions, mix)
    return out * torch.sigmoid(1.702 * out)
