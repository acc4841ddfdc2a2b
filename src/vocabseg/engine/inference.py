"""Test-time protocol shared by every model: resize, normalise, pad, and one
whole-image pass or a sliding window. Image-side work is kept apart from the
vocabulary-dependent classification so that a cached image can be re-scored.

Images enter as float tensors [3, H, W] in 0..1 (RGB).
"""
from __future__ import annotations

from dataclasses import dataclass

import math
import torch
import torch.nn.functional as F

from ..models.base import Protocol


def resize_short_side(image: torch.Tensor, short: int, max_side: int) -> torch.Tensor:
    """[B, 3, H, W] -> bilinear resize so min(H, W) == short and max(H, W) <= max_side."""
    h, w = image.shape[-2:]
    scale = short / min(h, w)
    if max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    nh, nw = int(round(h * scale)), int(round(w * scale))
    if (nh, nw) == (h, w):
        return image
    return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False)


def normalize(image: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    mean = torch.tensor(protocol.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(protocol.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std


def pad_to_multiple(image: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    h, w = image.shape[-2:]
    ph = (multiple - h % multiple) % multiple if multiple > 1 else 0
    pw = (multiple - w % multiple) % multiple if multiple > 1 else 0
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph), value=value)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide grid: (y0, x0, y1, x1) boxes of at most ``window`` covering
    [0, h) x [0, w); the last row / column is shifted back to end at the border."""
    rows = max(math.ceil((h - window) / stride), 0) + 1
    cols = max(math.ceil((w - window) / stride), 0) + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + window, h), min(c * stride + window, w)
            y0, x0 = max(y1 - window, 0), max(x1 - window, 0)
            boxes.append((y0, x0, y1, x1))
    return boxes


def protocol_boxes(p: Protocol, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The crops of an image resized to [h, w]: the whole image, or the slide grid."""
    if p.mode == "whole":
        return [(0, 0, h, w)]
    if p.mode == "slide":
        return window_boxes(h, w, p.window, p.stride)
    raise ValueError(f"unknown inference mode {p.mode!r}")


@dataclass
class ImageFeatures:
    """The vocabulary-independent part of one image's inference."""
    size: tuple[int, int]            # original H, W
    resized: tuple[int, int]         # H, W after resizing (before padding)
    boxes: list                      # window boxes in the resized image ([(0,0,H,W)] for whole)
    padded: list                     # padded size of each window's input
    features: list                   # model.encode_image output per window


def preprocess(image: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """[3, H, W] in 0..1 -> [1, 3, h, w] resized and normalised (not padded)."""
    x = image.unsqueeze(0) if image.ndim == 3 else image
    x = resize_short_side(x.float(), protocol.short_side, protocol.max_side)
    return normalize(x, protocol)


@torch.no_grad()
def encode(model, image: torch.Tensor, protocol: Protocol | None = None) -> ImageFeatures:
    """Image-side work for one image [3, H, W] (0..1)."""
    p = protocol or model.protocol
    size = tuple(image.shape[-2:])
    x = preprocess(image, p)
    h, w = x.shape[-2:]
    boxes = protocol_boxes(p, h, w)
    feats, padded = [], []
    for (y0, x0, y1, x1) in boxes:
        crop = pad_to_multiple(x[..., y0:y1, x0:x1], p.size_divisibility, p.pad_value)
        padded.append(tuple(crop.shape[-2:]))
        feats.append(model.encode_image(crop))
    return ImageFeatures(size, (h, w), boxes, padded, feats)


@torch.no_grad()
def scores(model, feats: ImageFeatures, text: torch.Tensor, vocab) -> torch.Tensor:
    """[C, H, W] per-class scores at the original size from cached image features.

    A model with ``classify_at(features, text, vocab, crop, size)`` (mask-classification
    models: SAN, FC-CLIP) gets a whole-image pass done its own way: it crops and resizes its
    mask logits to the original size before its sigmoid / softmax, as Mask2Former's
    ``sem_seg_postprocess`` does; other models' scores are cropped and resized here.
    """
    h, w = feats.resized
    if hasattr(model, "classify_at") and len(feats.boxes) == 1:
        y0, x0, y1, x1 = feats.boxes[0]
        out = model.classify_at(feats.features[0], text, vocab, crop=(y1 - y0, x1 - x0), size=tuple(feats.size))
        return model.finalize(out, vocab)[0]
    total = count = None
    for (y0, x0, y1, x1), f in zip(feats.boxes, feats.features):
        s = model.classify(f, text, vocab)[..., : y1 - y0, : x1 - x0]   # crop the padding
        if total is None:
            total = s.new_zeros((s.shape[0], s.shape[1], h, w))
            count = s.new_zeros((1, 1, h, w))
        total[..., y0:y1, x0:x1] += s
        count[..., y0:y1, x0:x1] += 1
    out = total / count
    if tuple(out.shape[-2:]) != tuple(feats.size):
        out = F.interpolate(out, size=feats.size, mode="bilinear", align_corners=False)
    return model.finalize(out, vocab)[0]


def infer(model, image: torch.Tensor, text: torch.Tensor, vocab, protocol: Protocol | None = None) -> torch.Tensor:
    """Whole protocol for one image [3, H, W] in 0..1 -> [C, H, W] class scores."""
    return scores(model, encode(model, image, protocol), text, vocab)


def _whole(model, feats: ImageFeatures, task: str):
    if len(feats.features) != 1:
        raise ValueError(f"{task} inference needs a whole-image pass, got {len(feats.features)} windows")
    if not hasattr(model, task):
        raise ValueError(f"{type(model).__name__} does not do {task} inference")
    return feats.features[0]


@torch.no_grad()
def panoptic(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"pan_seg": IntTensor [H, W], "segments": [...]} at the original size (models with ``panoptic``)."""
    return model.panoptic(_whole(model, feats, "panoptic"), text, vocab, feats.resized, feats.size, **kw)


@torch.no_grad()
def instances(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"masks": BoolTensor [N, H, W], "labels", "scores"} at the original size (models with ``instances``)."""
    return model.instances(_whole(model, feats, "instances"), text, vocab, feats.resized, feats.size, **kw)


@torch.no_grad()
def semantic_resized(model, feats: ImageFeatures, text: torch.Tensor, vocab) -> torch.Tensor:
    """[C, H, W] with the model's masks resized to the original size before they are
    combined (FC-CLIP's published semantic path when panoptic inference is on)."""
    return model.semantic(_whole(model, feats, "semantic"), text, vocab, feats.resized, feats.size)
