"""Test-time augmentation: the mean of the class scores over several short
sides, each optionally also horizontally flipped (detectron2's
``DatasetMapperTTA`` + ``SemanticSegmentorWithTTA``, used by SAN / MaskFormer).
"""
from __future__ import annotations

import dataclasses

import torch

from .image import MeanMap, encode, full_scores, score_map

DEFAULT_SIZES = (320, 480, 640, 800, 960, 1120)   # SAN / MaskFormer TEST.AUG.MIN_SIZES
DEFAULT_MAX_SIDE = 4480                            # TEST.AUG.MAX_SIZE


@torch.no_grad()
def infer_tta(model, image: torch.Tensor, text: torch.Tensor, vocab, sizes=DEFAULT_SIZES,
              flip: bool = True, max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """Image [3, H, W] in 0..1 -> [C, H, W] scores averaged over short sides
    ``sizes`` (long side <= ``max_side``), each also on the flipped image when
    ``flip`` (its scores flipped back). One size and no flip is plain ``infer``
    at that short side."""
    return full_scores(tta_map(model, image, text, vocab, sizes, flip, max_side))


@torch.no_grad()
def tta_map(model, image: torch.Tensor, text: torch.Tensor, vocab, sizes=DEFAULT_SIZES,
            flip: bool = True, max_side: int = DEFAULT_MAX_SIDE) -> MeanMap:
    """As ``infer_tta``, as a lazy ``MeanMap`` (each pass's features kept, the full-size
    scores built a band of rows at a time)."""
    if not sizes:
        raise ValueError("TTA needs at least one short side")
    maps, flips = [], []
    for size in sizes:
        protocol = dataclasses.replace(model.protocol, short_side=int(size), max_side=int(max_side))
        for flipped in ((False, True) if flip else (False,)):
            feats = encode(model, image.flip(-1) if flipped else image, protocol)
            maps.append(score_map(model, feats, text, vocab))
            flips.append(flipped)
    return MeanMap(maps, flips)
