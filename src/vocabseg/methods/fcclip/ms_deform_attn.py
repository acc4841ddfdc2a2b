"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query looks at ``P`` points per head on each of ``L`` feature levels and
returns the attention-weighted sum of the bilinearly sampled values. The
sampling follows the published CUDA operator exactly: locations are in
[0, 1] x [0, 1] of each level (x, y), a location maps to pixel coordinate
``x * W - 0.5`` (``grid_sample`` with ``align_corners=False``) and samples
outside the level read zero.

Two implementations, same numbers (up to float summation order):

* ``ms_deform_attn(..., impl="stack")`` — every level sampled, stacked, then
  weighted and summed (the reference formulation);
* ``impl="accumulate"`` (default) — each level's samples are weighted in
  place and added into the output as they are produced, so the [.., L*P]
  stack of sampled values is never held (220 MB for FC-CLIP's encoder on an
  800 x 1088 image, against 55 MB for its largest level);
* ``ms_deform_attn_gather`` — the fast path for inference (``vocabseg.speed``):
  bilinear corners and attention weights folded into one weighted
  ``embedding_bag`` over a zero-bordered value table, 2-3x faster on CPU.

``benchmarks/ms_deform_attn_speed.py`` times all three.

``MSDeformAttn`` is the module (query -> offsets and weights, value
projection, output projection) with the published parameter names.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import speed


def _check(value: torch.Tensor, shapes, locations: torch.Tensor, weights: torch.Tensor):
    n, s, m, d = value.shape
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError(f"sampling locations must be [N, Lq, M, L, P, 2], got {tuple(locations.shape)}")
    _, lq, m2, levels, points, _ = locations.shape
    if m2 != m or len(shapes) != levels:
        raise ValueError(f"value has {m} heads and {len(shapes)} levels; locations have {m2} heads, {levels} levels")
    if tuple(weights.shape) != (n, lq, m, levels, points):
        raise ValueError(f"attention weights must be {(n, lq, m, levels, points)}, got {tuple(weights.shape)}")
    total = sum(int(h) * int(w) for h, w in shapes)
    if total != s:
        raise ValueError(f"value holds {s} positions but the level shapes sum to {total}")


def ms_deform_attn_gather(value: torch.Tensor, shapes, locations: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """``ms_deform_attn`` as one weighted gather (same arguments and result).

    Every level gets a border of zeros (one pixel before, two after), so a bilinear
    corner outside the level reads a zero row, as ``grid_sample``'s zero padding does
    (coordinates are first clamped into [-1, W] x [-1, H], which changes no weight
    that multiplies a non-zero value). Bilinear weight x attention weight then become the per-row
    weights of one ``F.embedding_bag`` over the head-major value table: each output
    row is a weighted sum of L * P * 4 value rows read once, with no
    [N*M, D, Lq, P] sample tensor in between. Pixel coordinates are ``x * W - 0.5``,
    as in the published CUDA operator."""
    shapes = [(int(h), int(w)) for h, w in (shapes.tolist() if torch.is_tensor(shapes) else shapes)]
    _check(value, shapes, locations, weights)
    n, s, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    dev, dt = value.device, value.dtype
    padded = [(h + 3) * (w + 3) for h, w in shapes]
    table = torch.cat([F.pad(v.permute(0, 2, 3, 1).reshape(n * m, d, h, w), (1, 2, 1, 2))
                       .flatten(2).transpose(1, 2) for v, (h, w) in zip(value.split([h * w for h, w in shapes], 1), shapes)],
                      dim=1)                                                           # [N*M, sum padded, D]
    size = torch.tensor([[w, h] for h, w in shapes], device=dev, dtype=dt).view(levels, 1, 2)
    xy = (locations.to(dt) * size - 0.5).clamp_(min=-1.0)
    xy = torch.minimum(xy, size).add_(1.0)                                             # in the padded level
    corner = xy.floor()
    frac = xy.sub_(corner)                                                             # [N, Lq, M, L, P, 2]
    corner = corner.to(torch.int32)
    row_len = torch.tensor([w + 3 for h, w in shapes], device=dev, dtype=torch.int32).view(levels, 1)
    starts = torch.tensor([0] + padded[:-1], device=dev, dtype=torch.int32).cumsum(0).view(levels, 1)
    head = (torch.arange(n * m, device=dev, dtype=torch.int32) * sum(padded)).view(n, 1, m, 1, 1)
    base = corner[..., 1] * row_len + corner[..., 0] + starts + head                  # [N, Lq, M, L, P]
    idx = torch.stack([base, base + 1, base + row_len, base + row_len + 1], -1)        # corners y0x0 y0x1 y1x0 y1x1
    fx, fy = frac[..., 0], frac[..., 1]
    wy0 = (1 - fy).mul_(weights)
    wy1 = fy * weights
    wts = torch.stack([wy0 * (1 - fx), wy0 * fx, wy1 * (1 - fx), wy1 * fx], -1)
    k = levels * points * 4
    out = F.embedding_bag(idx.view(-1, k), table.reshape(-1, d), mode="sum", per_sample_weights=wts.view(-1, k))
    return out.view(n, lq, m * d)


def ms_deform_attn(value: torch.Tensor, shapes, locations: torch.Tensor, weights: torch.Tensor,
                   impl: str = "accumulate") -> torch.Tensor:
    """Deformable attention core.

    value     [N, S, M, D]   S = sum of H_l * W_l (levels flattened row-major, in order)
    shapes    [(H_l, W_l)] * L  (list or LongTensor [L, 2])
    locations [N, Lq, M, L, P, 2]  (x, y) in 0..1 of each level
    weights   [N, Lq, M, L, P]     attention weights (softmax over L*P done by the caller)
    -> [N, Lq, M * D]
    """
    shapes = [(int(h), int(w)) for h, w in (shapes.tolist() if torch.is_tensor(shapes) else shapes)]
    _check(value, shapes, locations, weights)
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    w = weights.transpose(1, 2).reshape(n * m, 1, lq, levels, points)
    out = None
    samples = []
    for lvl, (h, wd) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, wd)       # [N*M, D, H, W]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)                        # [N*M, Lq, P, 2]
        sampled = F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)                                  # [N*M, D, Lq, P]
        if impl == "stack":
            samples.append(sampled)
        elif impl == "accumulate":
            part = sampled.mul_(w[:, :, :, lvl]).sum(-1)           # in place: no second [.., P] tensor
            out = part if out is None else out + part
        else:
            raise ValueError(f"unknown impl {impl!r}; use 'accumulate' or 'stack'")
    if impl == "stack":
        out = (torch.stack(samples, dim=-2).flatten(-2) * w.flatten(-2)).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (d_model, levels, heads, points).

    forward(query [N, Lq, C], reference [N, Lq, L, 2] in 0..1, value_in [N, S, C],
    shapes [(H_l, W_l)] * L, padding_mask [N, S] (True = padding) or None) -> [N, Lq, C].
    Offsets are in pixels of each level: location = reference + offset / (W_l, H_l).
    """

    def __init__(self, d_model: int = 256, levels: int = 4, heads: int = 8, points: int = 4):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.impl = "accumulate"
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights, offsets biased to a ring of
        points (k+1 pixels in the head's direction), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value_in: torch.Tensor, shapes,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, lq, _ = query.shape
        value = self.value_proj(value_in)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, value.shape[1], self.heads, self.d_model // self.heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, lq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, lq, self.heads, self.levels, self.points)
        hw = torch.as_tensor([[int(h), int(w)] for h, w in shapes], dtype=query.dtype, device=query.device)
        normalizer = hw.flip(-1)                                    # (W_l, H_l)
        locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if speed.fast() and not torch.is_grad_enabled():
            return self.output_proj(ms_deform_attn_gather(value, shapes, locations, weights))
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights, self.impl))
