"""Test-time augmentation: the mean of the class scores over several short
sides, each optionally also horizontally flipped (detectron2's
``DatasetMapperTTA`` + ``SemanticSegmentorWithTTA``, used by SAN / MaskFormer).
"""
from __future__ import annotations

import dataclasses

import torch

from .image import infer

DEFAULT_SIZES = (320, 480, 640, 800, 960, 1120)   # SAN / MaskFormer TEST.AUG.MIN_SIZES
DEFAULT_MAX_SIDE = 4480                            # TEST.AUG.MAX_SIZE


@torch.no_grad()
def infer_tta(model, image: torch.Tensor, text: torch.Tensor, vocab, sizes=DEFAULT_SIZES,
              flip: bool = True, max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """Image [3, H, W] in 0..1 -> [C, H, W] scores averaged over short sides
    ``sizes`` (long side <= ``max_side``), each also on the flipped image when
    ``flip`` (its scores flipped back). One size and no flip is plain ``infer``
    at that short side."""
    if not sizes:
        raise ValueError("TTA needs at least one short side")
    total, count = None, 0
    for size in sizes:
        protocol = dataclasses.replace(model.protocol, short_side=int(size), max_side=int(max_side))
        for flipped in ((False, True) if flip else (False,)):
            out = infer(model, image.flip(-1) if flipped else image, text, vocab, protocol)
            out = out.flip(-1) if flipped else out
            total = out if total is None else total + out
            count += 1
    return total / count
