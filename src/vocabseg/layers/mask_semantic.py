"""Semantic scores from mask classification (Mask2Former's ``semantic_inference``
after ``sem_seg_postprocess``), shared by SAN and FC-CLIP.

    masks  = bilinear(mask_logits, padded)[:crop_h, :crop_w]     (then bilinear to ``size``)
    scores = sum_q prob[q, c] * sigmoid(masks[q])               [B, C, H, W]

The straightforward path materialises the Q upsampled masks and then sums over
them. The fast path (``vocabseg.speed``) produces the same numbers a band of
output rows at a time, so no [Q, H, W] stack of upsampled masks is held: along the width
it runs the same ``F.interpolate`` calls on only the low-resolution rows the
band reads; along the height the resize -> crop -> resize chain is one small
matrix (built by running that chain on the identity, so it holds the very
weights ``F.interpolate`` uses). The result is written class-last ([B, H, W, C]
storage, returned as a [B, C, H, W] view), which also makes the per-pixel
argmax / max over classes that follow fast.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import speed

CHUNK_FLOATS = 1 << 22      # size of one band of upsampled masks (16 MB)


@functools.lru_cache(maxsize=32)
def resample_matrix(n_in: int, n_padded: int, n_crop: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix of bilinear(n_in -> n_padded), crop to n_crop, bilinear(-> n_out)
    along one axis (align_corners=False), obtained by resampling the identity."""
    x = F.interpolate(torch.eye(n_in)[None], size=n_padded, mode="linear", align_corners=False)[..., :n_crop]
    if n_crop != n_out:
        x = F.interpolate(x, size=n_out, mode="linear", align_corners=False)
    return x[0].t().contiguous()


def mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                  crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``prob`` [B, Q, C] class probabilities, ``mask_logits`` [B, Q, h, w] -> [B, C, H, W].

    The masks are resized (bilinear) to ``padded``, cropped to ``crop`` (default: no
    crop) and resized to ``size`` (default: ``crop``) before the sigmoid."""
    crop = tuple(crop or padded)
    size = tuple(size or crop)
    return (fast_mask_semantic if speed.fast() else plain_mask_semantic)(prob, mask_logits, padded, crop, size)


def plain_mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                        crop: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] scores from the Q masks all upsampled at once ([B, Q, H, W] held)."""
    masks = F.interpolate(mask_logits, size=tuple(padded), mode="bilinear", align_corners=False)
    masks = masks[..., : crop[0], : crop[1]]
    if size != crop:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", prob, masks.sigmoid())


def fast_mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                       crop: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``plain_mask_semantic`` a band of output rows at a time, written class-last (a [B, C, H, W] view)."""
    b, q, h, w = mask_logits.shape
    c = prob.shape[-1]
    rows_h = resample_matrix(h, int(padded[0]), crop[0], size[0]).to(mask_logits)      # [H, h]
    out = prob.new_empty(b, size[0], size[1], c)
    band = max(1, CHUNK_FLOATS // max(1, b * q * size[1]))
    for r0 in range(0, size[0], band):
        a = rows_h[r0:r0 + band]
        used = a.ne(0).any(0).nonzero()
        lo, hi = int(used.min()), int(used.max()) + 1
        t = F.interpolate(mask_logits[:, :, lo:hi], size=(hi - lo, int(padded[1])), mode="bilinear",
                          align_corners=False)[..., : crop[1]]
        if size[1] != crop[1]:
            t = F.interpolate(t, size=(hi - lo, size[1]), mode="bilinear", align_corners=False)
        m = torch.matmul(a[:, lo:hi], t).sigmoid_()                                  # [B, Q, rows, W]
        for i in range(b):
            torch.mm(m[i].reshape(q, -1).t(), prob[i], out=out[i, r0:r0 + a.shape[0]].view(-1, c))
    return out.permute(0, 3, 1, 2)
