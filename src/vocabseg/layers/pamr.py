"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as ResCLIP
(yvhangyang/ResCLIP ``pamr.py``) and NACLIP use it: score maps are diffused a few
times over a pixel's neighbours, weighted by how alike their colours are.

For each dilation d the 8 neighbours of a pixel are at {-d, 0, d}² minus the centre
(the image replicate-padded at the border). With the centre counted once per
dilation, σ_c(x) is the unbiased standard deviation of the 9·n_d colour samples of
channel c, and the affinity of pixel x to neighbour n is

    a(x, n) = softmax over the 8·n_d neighbours of  -mean_c |I_c(x) - I_c(n)| / (1e-8 + 0.1 σ_c(x))

then ``iters`` times  mask(x) <- Σ_n a(x, n) mask(n). The mask is first resized
bilinearly to the image (``align_corners=True``); the output is not renormalised.
Published settings: 10 iterations with dilations (8, 16) inside ResCLIP's feedback
pass, and (1, 2, 4, 8, 12, 24) for a final refinement (NACLIP's, ResCLIP's
``--show-dir`` visualisation uses 50 iterations).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ITERS = 10
DILATIONS = (8, 16)                   # ResCLIP's feedback pass (create_logit_temp)
FINAL_DILATIONS = (1, 2, 4, 8, 12, 24)   # NACLIP's / ResCLIP's final refinement (pamr_stride)


def neighbour_offsets(d: int) -> list[tuple[int, int]]:
    """The 8 (dy, dx) offsets at dilation ``d``, in raster order."""
    return [(dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def shifted(x: torch.Tensor, dy: int, dx: int, padded: torch.Tensor, d: int) -> torch.Tensor:
    """x[..., y + dy, x + dx] with replicate padding: a view of ``padded`` (x padded by d)."""
    h, w = x.shape[-2:]
    return padded[..., d + dy:d + dy + h, d + dx:d + dx + w]


def affinity(image: torch.Tensor, dilations=DILATIONS) -> torch.Tensor:
    """[B, 3, H, W] image -> [B, 8·n_d, H, W] neighbour weights (softmax over dim 1)."""
    pads = {d: F.pad(image, [d] * 4, mode="replicate") for d in dilations}
    samples, diffs = [], []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                samples.append(shifted(image, dy, dx, pads[d], d))
        diffs += [(image - shifted(image, dy, dx, pads[d], d)).abs() for dy, dx in neighbour_offsets(d)]
    std = torch.stack(samples, 2).std(2)                                  # [B, 3, H, W], unbiased
    logits = -torch.stack(diffs, 2) / (1e-8 + 0.1 * std[:, :, None])      # [B, 3, 8·n_d, H, W]
    return logits.mean(1).softmax(1)


def pamr(image: torch.Tensor, mask: torch.Tensor, iters: int = ITERS, dilations=DILATIONS) -> torch.Tensor:
    """Refine score maps ``mask`` [B, K, h, w] with image [B, 3, H, W] -> [B, K, H, W].

    Any per-channel affine normalisation of ``image`` gives the same result (up to the
    1e-8), so a normalised image works as well as a 0..1 one."""
    if image.ndim != 4 or mask.ndim != 4 or image.shape[0] != mask.shape[0]:
        raise ValueError(f"pamr needs image [B, 3, H, W] and mask [B, K, h, w], got {tuple(image.shape)} "
                         f"and {tuple(mask.shape)}")
    if iters < 0 or not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"pamr needs iters >= 0 and dilations >= 1, got {iters} and {tuple(dilations)}")
    dilations = tuple(int(d) for d in dilations)
    image = image.to(mask.dtype) if mask.is_floating_point() else image.float()
    mask = F.interpolate(mask.to(image.dtype), size=image.shape[-2:], mode="bilinear", align_corners=True)
    if iters == 0:
        return mask
    a = affinity(image, dilations)                                        # [B, 8·n_d, H, W]
    offsets = [(d, dy, dx) for d in dilations for dy, dx in neighbour_offsets(d)]
    for _ in range(iters):       # Σ_n a(x, n) mask(n), one neighbour at a time ([B, K, 8·n_d, H, W] never exists)
        pads = {d: F.pad(mask, [d] * 4, mode="replicate") for d in dilations}
        out = torch.zeros_like(mask)
        for i, (d, dy, dx) in enumerate(offsets):
            out += a[:, i:i + 1] * shifted(mask, dy, dx, pads[d], d)
        mask = out
    return mask
