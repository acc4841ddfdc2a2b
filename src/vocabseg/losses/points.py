"""PointRend-style point sampling for mask losses (Mask2Former, SAN, FC-CLIP).

Point coordinates are normalised to [0, 1] x [0, 1] as (x, y); they are mapped
to ``grid_sample``'s [-1, 1] with ``align_corners=False``, so a point refers to
the same place in a mask whatever the mask's resolution.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear values of ``inputs`` [N, C, H, W] at ``coords`` [N, P, 2] (x, y in 0..1)
    -> [N, C, P]. Outside the image the value is 0 (``grid_sample`` zero padding)."""
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"point coords must be [N, P, 2], got {tuple(coords.shape)}")
    grid = (2.0 * coords - 1.0).unsqueeze(2)                      # [N, P, 1, 2]
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=align_corners)
    return out.squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's uncertainty of class-agnostic logits [R, 1, ...]: -|logit|
    (highest at the decision boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(f"uncertainty expects one channel, got {logits.shape[1]}")
    return -logits.abs()


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float,
                           uncertainty_fn: Callable[[torch.Tensor], torch.Tensor] = uncertainty) -> torch.Tensor:
    """PointRend importance sampling on ``logits`` [N, 1, H, W] -> coords [N, num_points, 2].

    Draw ``int(num_points * oversample_ratio)`` uniform points, keep the
    ``int(importance_sample_ratio * num_points)`` most uncertain of them, and
    fill up with fresh uniform points.
    """
    if oversample_ratio < 1:
        raise ValueError("oversample_ratio must be >= 1")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError("importance_sample_ratio must be in [0, 1]")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    scores = uncertainty_fn(point_sample(logits, coords, align_corners=False))  # [N, 1, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(scores[:, 0, :], k=num_uncertain, dim=1)[1]              # [N, U]
    idx = idx + num_sampled * torch.arange(n, dtype=torch.long, device=logits.device)[:, None]
    chosen = coords.view(-1, 2)[idx.view(-1), :].view(n, num_uncertain, 2)
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
    return chosen
