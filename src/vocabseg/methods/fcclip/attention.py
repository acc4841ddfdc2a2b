"""Transformer decoder blocks of Mask2Former-style heads (post-norm, no dropout).

Layout is batch-first: queries [B, Q, C], memory [B, S, C]. Each block adds
its input back and normalises (``norm``); positional embeddings are added to
queries and keys, never to values. Weights of matrices are Xavier-uniform.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _add(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class SelfAttentionBlock(nn.Module):
    """x <- norm(x + MHA(x + pos, x + pos, x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        q = _add(x, pos)
        return self.norm(x + self.attn(q, q, x, need_weights=False)[0])


class CrossAttentionBlock(nn.Module):
    """x <- norm(x + MHA(x + query_pos, memory + pos, memory, mask)).
    ``mask``: bool [B * heads, Q, S], True = may not attend."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.attn(_add(x, query_pos), _add(memory, pos), memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(x + out)


class FFNBlock(nn.Module):
    """x <- norm(x + linear2(relu(linear1(x))))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))
