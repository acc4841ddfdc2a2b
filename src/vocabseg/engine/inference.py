"""Test-time protocol shared by every model: resize, normalise, pad, and one
whole-image pass or a sliding window. Image-side work is kept apart from the
vocabulary-dependent classification so that a cached image can be re-scored.

Images enter as float tensors [3, H, W] in 0..1 (RGB).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import math
import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import Protocol


def resized_size(h: int, w: int, short: int, max_side: int, rule: str = "mmcv") -> tuple[int, int]:
    """Output (H, W) of resizing to short side ``short`` with the long side at most
    ``max_side``, rounded as detectron2's ResizeShortestEdge (``rule="detectron2"``)
    or mmcv's imrescale (``"mmcv"``) do."""
    if rule == "detectron2":
        from ..data.transforms import shortest_edge_size
        return shortest_edge_size(h, w, short, max_side)
    scale = min(max_side / max(h, w), short / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_short_side(image: torch.Tensor, short: int, max_side: int, backend: str = "torch") -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> bilinear resize so min(H, W) == short and max(H, W) <= max_side.

    ``backend`` names the published pipeline being reproduced: ``"pil"`` — detectron2
    (SAN, FC-CLIP): PIL bilinear on the uint8 image; ``"cv2"`` — mmseg / mmcv (the
    training-free methods, SegCLIP): OpenCV INTER_LINEAR on the uint8 image;
    ``"torch"``: bilinear interpolation of the float image (align_corners=False).
    """
    h, w = image.shape[-2:]
    nh, nw = resized_size(h, w, short, max_side, "detectron2" if backend == "pil" else "mmcv")
    if (nh, nw) == (h, w):
        return image
    if backend == "torch":
        return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False)
    if backend not in ("pil", "cv2"):
        raise ValueError(f"unknown resize backend {backend!r}; use pil, cv2 or torch")
    out = []
    for im in (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        if backend == "pil":
            from PIL import Image
            im = np.array(Image.fromarray(im).resize((nw, nh), Image.BILINEAR))   # writable
        else:
            import cv2
            im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out.append(torch.from_numpy(np.ascontiguousarray(im)))
    return torch.stack(out).permute(0, 3, 1, 2).to(image.device, image.dtype) / 255.0


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
    x = resize_short_side(x.float(), protocol.short_side, protocol.max_side, protocol.resize)
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


def select(features, j: int):
    """Image ``j`` of a batch of ``encode_image`` outputs (tensors, dicts, dataclasses,
    lists / tuples of them): every tensor sliced to ``[j:j+1]``; other values kept."""
    if isinstance(features, torch.Tensor):
        return features[j:j + 1] if features.ndim else features
    if isinstance(features, dict):
        return {k: select(v, j) for k, v in features.items()}
    if is_dataclass(features) and not isinstance(features, type):
        return replace(features, **{f.name: select(getattr(features, f.name), j) for f in fields(features)})
    if isinstance(features, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in features):
        return type(features)(select(v, j) for v in features)
    return features


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
    return finish_windows(model, total, count, feats.size, vocab)


def finish_windows(model, total: torch.Tensor, count: torch.Tensor, size, vocab) -> torch.Tensor:
    """Window scores summed into ``total`` [1, C, h, w] (``count`` windows per pixel) ->
    their mean, resized to the original ``size``, through ``model.finalize`` -> [C, H, W]."""
    out = total / count
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
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
