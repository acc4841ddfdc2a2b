"""Batched form of ``inference.infer``: the crops of several images (whole
images, or sliding windows) that share a padded size go through
``encode_image`` / ``classify`` together, at most ``max_crops`` at a time.
Each image's scores are then assembled exactly as ``inference.scores`` does
(``batch_maps``: as lazy ``ScoreMap``, built a band of rows at a time); with
``max_crops=1`` the result is bit-identical to ``infer`` image by image.
"""
from __future__ import annotations

import torch

from ...protocol import pad_to_multiple, preprocess, protocol_boxes
from .image import ScoreMap, full_scores, select, whole_map, window_map
from .refine import refine_map


@torch.no_grad()
def infer_batch(model, images: list[torch.Tensor], text: torch.Tensor, vocab, protocol=None,
                max_crops: int = 8, refine=None) -> list[torch.Tensor]:
    """Images float [3, H_i, W_i] in 0..1 -> per-class scores [C, H_i, W_i] each
    (on the model's device); ``refine``: a post-processing (``refine.parse_refine``)."""
    return [full_scores(m) for m in batch_maps(model, images, text, vocab, protocol, max_crops, refine)]


@torch.no_grad()
def batch_maps(model, images: list[torch.Tensor], text: torch.Tensor, vocab, protocol=None,
               max_crops: int = 8, refine=None) -> list[ScoreMap]:
    """As ``infer_batch``, each image's scores as a lazy ``ScoreMap`` (``refine``: ``refine.refine_map``)."""
    p = protocol or model.protocol
    if max_crops < 1:
        raise ValueError(f"max_crops must be at least 1, got {max_crops}")
    device = model.device
    crops, resized, windows = [], [], []    # crops: (image index, box, padded crop [3, h, w])
    for i, img in enumerate(images):
        x = preprocess(img.to(device), p)
        h, w = x.shape[-2:]
        resized.append((h, w))
        boxes = protocol_boxes(p, h, w)
        windows.append(len(boxes))
        for (y0, x0, y1, x1) in boxes:
            crops.append((i, (y0, x0, y1, x1),
                          pad_to_multiple(x[..., y0:y1, x0:x1], p.size_divisibility, p.pad_value)[0]))
    by_shape: dict[tuple, list[int]] = {}
    for k, (_, _, c) in enumerate(crops):
        by_shape.setdefault(tuple(c.shape), []).append(k)
    total: list = [None] * len(images)
    count: list = [None] * len(images)
    done: list = [None] * len(images)
    for ks in by_shape.values():
        for s in range(0, len(ks), max_crops):
            chunk = ks[s:s + max_crops]
            feats = model.encode_image(torch.stack([crops[k][2] for k in chunk]))
            whole = [j for j, k in enumerate(chunk) if windows[crops[k][0]] == 1]   # as inference.scores does
            for j in whole:
                i, box, _ = crops[chunk[j]]
                done[i] = whole_map(model, select(feats, j), text, vocab, box, images[i].shape[-2:])
            if len(whole) == len(chunk):
                continue
            out = model.classify(feats, text, vocab)
            for j, k in enumerate(chunk):
                i, (y0, x0, y1, x1), _ = crops[k]
                if windows[i] == 1:
                    continue
                sc = out[j:j + 1, :, : y1 - y0, : x1 - x0]
                if total[i] is None:
                    total[i] = sc.new_zeros((1, sc.shape[1], *resized[i]))
                    count[i] = sc.new_zeros((1, 1, *resized[i]))
                total[i][..., y0:y1, x0:x1] += sc
                count[i][..., y0:y1, x0:x1] += 1
    results = []
    for i, img in enumerate(images):
        out = done[i] if done[i] is not None else window_map(model, total[i], count[i], img.shape[-2:], vocab)
        results.append(out if refine is None else refine_map(out, img, p, refine))
    return results
