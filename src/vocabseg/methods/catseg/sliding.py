"""CAT-Seg's published test-time views (``CATSeg.inference_sliding_window``, run by
its eval.sh): the image is resized to ``out`` x ``out`` ignoring its aspect, cut
into ``kernel`` crops every ``stride`` pixels (as ``nn.Unfold``: row-major), and
a global view (the image resized to ``kernel`` x ``kernel``) is added. The
crops' probabilities are averaged where they overlap (``nn.Fold`` over the
overlap count), the global view's resized to ``out``, and the two averaged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_starts(out: int, kernel: int, stride: int) -> list[int]:
    """Crop offsets along one side (``nn.Unfold``'s); the crops must cover the side."""
    if kernel > out or (out - kernel) % stride:
        raise ValueError(f"crops of {kernel} every {stride} do not tile a side of {out}")
    return list(range(0, out - kernel + 1, stride))


def slide_views(images: torch.Tensor, out: int, kernel: int, stride: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, V, 3, kernel, kernel]: the crops of the image resized to
    ``out`` x ``out`` (row-major), then the whole image resized to ``kernel`` x ``kernel``."""
    big = F.interpolate(images, size=(out, out), mode="bilinear", align_corners=False)
    starts = crop_starts(out, kernel, stride)
    views = [big[..., y:y + kernel, x:x + kernel] for y in starts for x in starts]
    views.append(F.interpolate(images, size=(kernel, kernel), mode="bilinear", align_corners=False))
    return torch.stack(views, dim=1)


def fold_views(prob: torch.Tensor, out: int, stride: int) -> torch.Tensor:
    """[B, V, N, k, k] view probabilities (crops as ``slide_views`` orders them, then
    the global view) -> [B, N, out, out]: (overlap mean of the crops + global) / 2."""
    b, v, n, k, _ = prob.shape
    starts = crop_starts(out, k, stride)
    if v != len(starts) ** 2 + 1:
        raise ValueError(f"expected {len(starts) ** 2} crops and a global view, got {v} views")
    total = prob.new_zeros(b, n, out, out)
    count = prob.new_zeros(1, 1, out, out)
    i = 0
    for y in starts:
        for x in starts:
            total[..., y:y + k, x:x + k] += prob[:, i]
            count[..., y:y + k, x:x + k] += 1
            i += 1
    whole = F.interpolate(prob[:, -1], size=(out, out), mode="bilinear", align_corners=False)
    return (total / count + whole) / 2
