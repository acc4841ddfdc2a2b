"""Inference on one image: the test-time protocol (``vocabseg.protocol``) carried
out with a model. Image-side work (``encode``) is kept apart from the
vocabulary-dependent classification (``scores``) so that a cached image can be
re-scored.

Images enter as float tensors [3, H, W] in 0..1 (RGB).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.nn.functional as F

from ...protocol import Protocol, pad_to_multiple, preprocess, protocol_boxes


@dataclass
class ImageFeatures:
    """The vocabulary-independent part of one image's inference."""
    size: tuple[int, int]            # original H, W
    resized: tuple[int, int]         # H, W after resizing (before padding)
    boxes: list                      # window boxes in the resized image ([(0,0,H,W)] for whole)
    padded: list                     # padded size of each window's input
    features: list                   # model.encode_image output per window


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

    One window (a whole-image pass): ``model.classify_at`` crops the padding and resizes
    to the original size its own way (mask classifiers resize their mask logits before
    their sigmoid / softmax, as Mask2Former's ``sem_seg_postprocess`` does). Several
    windows: each window's ``classify`` scores, cropped, are averaged where they overlap
    and resized here (``finish_windows``).
    """
    if len(feats.boxes) == 1:
        return whole_scores(model, feats.features[0], text, vocab, feats.boxes[0], feats.size)
    h, w = feats.resized
    total = count = None
    for (y0, x0, y1, x1), f in zip(feats.boxes, feats.features):
        s = model.classify(f, text, vocab)[..., : y1 - y0, : x1 - x0]   # crop the padding
        if total is None:
            total = s.new_zeros((s.shape[0], s.shape[1], h, w))
            count = s.new_zeros((1, 1, h, w))
        total[..., y0:y1, x0:x1] += s
        count[..., y0:y1, x0:x1] += 1
    return finish_windows(model, total, count, feats.size, vocab)


def whole_scores(model, features, text: torch.Tensor, vocab, box, size) -> torch.Tensor:
    """[C, H, W] scores of the one window ``box`` (y0, x0, y1, x1) covering an image of
    original ``size``, from its ``encode_image`` output."""
    y0, x0, y1, x1 = box
    out = model.classify_at(features, text, vocab, crop=(y1 - y0, x1 - x0), size=tuple(size))
    return model.finalize(out, vocab)[0]


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
    if task not in model.tasks:
        raise ValueError(f"{type(model).__name__} does not do {task} inference")
    return feats.features[0]


@torch.no_grad()
def panoptic(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"pan_seg": IntTensor [H, W], "segments": [...]} at the original size (models with ``panoptic``)."""
    return model.panoptic(_whole(model, feats, "panoptic"), text, vocab, feats.resized, feats.size, **kw)


@torch.no_grad()
def instances(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"masks": BoolTensor [N, H, W], "labels", "scores"} at the original size (models with ``instances``)."""
    return model.instances(_whole(model, feats, "instance"), text, vocab, feats.resized, feats.size, **kw)
