"""Semantic scores from mask classification (Mask2Former's ``semantic_inference``
after ``sem_seg_postprocess``), shared by SAN and FC-CLIP, and the banded
bilinear resize both it and the engine use to build full-size maps a band of
rows at a time.

    masks  = bilinear(mask_logits, padded)[:crop_h, :crop_w]     (then bilinear to ``size``)
    scores = sum_q prob[q, c] * sigmoid(masks[q])               [B, C, H, W]

The straightforward path materialises the Q upsampled masks and then sums over
them. The fast path (``vocabseg.speed``) produces a band of output rows at a
time (``resize_rows``), so no [Q, H, W] stack of upsampled masks is held: along
the width it runs the same ``F.interpolate`` calls on only the low-resolution
rows the band reads; along the height the resize -> crop -> resize chain is a
few taps per output row (the weights ``F.interpolate`` uses, obtained by running
that chain on the identity). The result is written class-last
([B, H, W, C] storage, returned as a [B, C, H, W] view), which also makes the
per-pixel argmax / max over classes that follow fast.
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


@functools.lru_cache(maxsize=32)
def resample_taps(n_in: int, n_padded: int, n_crop: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``resample_matrix`` as taps: (input index [n_out, K], weight [n_out, K]), each row's
    non-zero weights in increasing input order (padded with weight 0 on its last index)."""
    m = resample_matrix(n_in, n_padded, n_crop, n_out)
    nz = m.ne(0)
    k = max(1, int(nz.sum(1).max()))
    order = torch.where(nz, torch.arange(n_in), n_in).sort(1).values[:, :k]      # non-zero columns first
    last = order.masked_fill(order == n_in, -1).amax(1, keepdim=True)
    idx = torch.where(order == n_in, last, order)
    return idx, torch.where(order == n_in, torch.zeros(()), m.gather(1, idx))


def resize_rows(x: torch.Tensor, padded: tuple[int, int], crop: tuple[int, int], size: tuple[int, int],
                r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``x`` [B, K, h, w] resized (bilinear) to ``padded``, cropped to
    ``crop`` and resized (bilinear) to ``size`` -> [B, K, r1 - r0, size[1]]. Only the
    input rows the band reads are touched (a band's values can differ from the whole
    map's in the last bit).
    Inside ``speed.plain_paths()``, or when all rows are asked: the whole map resized at once."""
    if not speed.fast() or (r0, r1) == (0, int(size[0])):
        t = F.interpolate(x, size=tuple(padded), mode="bilinear", align_corners=False)[..., : crop[0], : crop[1]]
        if tuple(size) != tuple(crop):
            t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
        return t[:, :, r0:r1]
    idx, wts = resample_taps(x.shape[-2], int(padded[0]), int(crop[0]), int(size[0]))
    idx, wts = idx[r0:r1], wts[r0:r1].to(x)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    t = F.interpolate(x[:, :, lo:hi], size=(hi - lo, int(padded[1])), mode="bilinear",
                      align_corners=False)[..., : crop[1]]
    if size[1] != crop[1]:
        t = F.interpolate(t, size=(hi - lo, int(size[1])), mode="bilinear", align_corners=False)
    idx = idx - lo
    out = t[:, :, idx[:, 0]] * wts[:, 0, None]
    for j in range(1, idx.shape[1]):
        out += t[:, :, idx[:, j]] * wts[:, j, None]
    return out


def mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                  crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None,
                  rows: tuple[int, int] | None = None) -> torch.Tensor:
    """``prob`` [B, Q, C] class probabilities, ``mask_logits`` [B, Q, h, w] -> [B, C, H, W].

    The masks are resized (bilinear) to ``padded``, cropped to ``crop`` (default: no
    crop) and resized to ``size`` (default: ``crop``) before the sigmoid. ``rows``
    (r0, r1): only those output rows ([B, C, r1 - r0, W])."""
    crop = tuple(crop or padded)
    size = tuple(size or crop)
    r0, r1 = rows or (0, size[0])
    if not speed.fast():
        return plain_mask_semantic(prob, mask_logits, padded, crop, size)[:, :, r0:r1]
    return fast_mask_semantic(prob, mask_logits, padded, crop, size, r0, r1)


def plain_mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                        crop: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] scores from the Q masks all upsampled at once ([B, Q, H, W] held)."""
    masks = F.interpolate(mask_logits, size=tuple(padded), mode="bilinear", align_corners=False)
    masks = masks[..., : crop[0], : crop[1]]
    if size != crop:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", prob, masks.sigmoid())


def fast_mask_semantic(prob: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                       crop: tuple[int, int], size: tuple[int, int], r0: int = 0, r1: int | None = None
                       ) -> torch.Tensor:
    """Rows ``r0:r1`` of ``plain_mask_semantic`` a band of rows at a time, written class-last
    (a [B, C, r1 - r0, W] view)."""
    b, q, h, w = mask_logits.shape
    c = prob.shape[-1]
    r1 = size[0] if r1 is None else r1
    rows_h = resample_matrix(h, int(padded[0]), crop[0], size[0]).to(mask_logits)[r0:r1]     # [rows, h]
    out = prob.new_empty(b, r1 - r0, size[1], c)
    band = max(1, CHUNK_FLOATS // max(1, b * q * size[1]))
    for s0 in range(0, r1 - r0, band):
        a = rows_h[s0:s0 + band]
        used = a.ne(0).any(0).nonzero()
        lo, hi = int(used.min()), int(used.max()) + 1
        t = F.interpolate(mask_logits[:, :, lo:hi], size=(hi - lo, int(padded[1])), mode="bilinear",
                          align_corners=False)[..., : crop[1]]
        if size[1] != crop[1]:
            t = F.interpolate(t, size=(hi - lo, size[1]), mode="bilinear", align_corners=False)
        m = torch.matmul(a[:, lo:hi], t).sigmoid_()                                  # [B, Q, rows, W]
        for i in range(b):
            torch.mm(m[i].reshape(q, -1).t(), prob[i], out=out[i, s0:s0 + a.shape[0]].view(-1, c))
    return out.permute(0, 3, 1, 2)
