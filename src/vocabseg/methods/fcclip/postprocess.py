"""FC-CLIP's inference-time classification and the three post-processings.

``ensemble_logits`` combines the in-vocabulary logits (decoder embeddings) and
the out-of-vocabulary logits (mask-pooled frozen CLIP features), both
[..., C + 1] with void last:

    p_in  = softmax(in[..., :C]),  p_out = softmax(out[..., :C])
    g     = log(p_in ** (1 - a) * p_out ** a),  a = alpha for seen classes, beta otherwise
    void  = softmax(in)[..., C]
    probs = [softmax(g) * (1 - void), void]
    -> log(probs + 1e-8)   (the "class logits" the post-processings softmax again)

The published code computes ``log(p_in ** (1 - a) * p_out ** a)`` for both
exponents and mixes them with ``* seen + * (1 - seen)``, which is NaN as soon as
a probability underflows to 0 (logit gaps > ~100 at CLIP's scale); we compute
``(1 - a) * log_softmax(in) + a * log_softmax(out)`` with ``a`` chosen per
class: the same numbers (to float rounding) wherever the published ones are finite.

Post-processings take one image's logits [Q, C + 1] and mask logits [Q, H, W]
already at the output size (``resize_masks`` does detectron2's
``sem_seg_postprocess``: crop the padding, bilinear resize).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

ALPHA, BETA = 0.4, 0.8
OBJECT_THRESHOLD, OVERLAP_THRESHOLD, TOPK = 0.0, 0.8, 100


def ensemble_logits(in_logits: torch.Tensor, out_logits: torch.Tensor, seen: torch.Tensor,
                    alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """Geometric ensemble + void rescaling (see module doc). ``seen`` bool [C]."""
    if in_logits.shape != out_logits.shape:
        raise ValueError(f"in- and out-of-vocabulary logits differ in shape: {tuple(in_logits.shape)} "
                         f"vs {tuple(out_logits.shape)}")
    if seen.numel() != in_logits.shape[-1] - 1:
        raise ValueError(f"seen mask has {seen.numel()} classes, logits {in_logits.shape[-1] - 1} (+ void)")
    log_in = in_logits[..., :-1].log_softmax(-1)
    log_out = out_logits[..., :-1].log_softmax(-1)
    a = torch.where(seen.to(device=log_in.device, dtype=torch.bool), alpha, beta).to(log_in.dtype)
    g = (1 - a) * log_in + a * log_out
    void = in_logits.softmax(-1)[..., -1:]
    probs = torch.cat([g.softmax(-1) * (1.0 - void), void], dim=-1)
    return torch.log(probs + 1e-8)


def resize_masks(mask_logits: torch.Tensor, crop_hw: Sequence[int], out_hw: Sequence[int]) -> torch.Tensor:
    """[Q, H, W] at the padded input size -> crop to ``crop_hw`` -> bilinear to ``out_hw``."""
    x = mask_logits[:, : crop_hw[0], : crop_hw[1]]
    if tuple(x.shape[-2:]) == tuple(out_hw):
        return x
    return F.interpolate(x[None], size=tuple(out_hw), mode="bilinear", align_corners=False)[0]


def semantic_inference(logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """[Q, C + 1], [Q, H, W] -> [C, H, W] = sum_q softmax(logits)[q, c] * sigmoid(mask_q)."""
    return torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], mask_logits.sigmoid())


def panoptic_inference(logits: torch.Tensor, mask_logits, isthing: Sequence[bool],
                       object_threshold: float = OBJECT_THRESHOLD,
                       overlap_threshold: float = OVERLAP_THRESHOLD, size: Sequence[int] | None = None
                       ) -> tuple[torch.Tensor, list[dict]]:
    """Mask2Former's panoptic merge.

    Keep queries whose best class is not void and scores > ``object_threshold``;
    every pixel goes to the kept query with the highest score * mask prob; a
    query keeps the pixels it won where its own mask prob >= 0.5, and is dropped
    when that is empty or less than ``overlap_threshold`` of its mask (prob >= 0.5).
    Stuff queries of one class share one segment (the first one's id).
    Returns (IntTensor [H, W] segment ids, 0 = void; segments as dicts id,
    category_id, isthing, score (of the query that created it), area).

    ``mask_logits``: [Q, H, W], or a function (r0, r1) -> [Q, r1 - r0, W] of the
    image's rows with ``size`` (H, W): the image is then read one row at a time, twice
    (areas, then segment ids), so no [Q, H, W] stack is held.
    """
    num_classes = logits.shape[-1] - 1
    if len(isthing) != num_classes:
        raise ValueError(f"isthing has {len(isthing)} entries for {num_classes} classes")
    if torch.is_tensor(mask_logits):
        size, full = mask_logits.shape[-2:], mask_logits
        mask_logits = lambda r0, r1: full[:, r0:r1]     # noqa: E731
    h, w = size
    scores, labels = logits.softmax(-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    n = cur_classes.shape[0]
    pan = torch.zeros((h, w), dtype=torch.int32, device=logits.device)
    segments: list[dict] = []
    if n == 0:
        return pan, segments

    def row(j):            # (owner [1, W], owner's mask prob >= 0.5 [1, W], every mask prob >= 0.5 [n, 1, W])
        m = mask_logits(j, j + 1)[keep].contiguous().sigmoid()
        owner = (cur_scores.view(-1, 1, 1) * m).argmax(0)
        return owner, m.gather(0, owner[None])[0] >= 0.5, m >= 0.5

    won = torch.zeros(n, dtype=torch.long, device=logits.device)
    original, kept = torch.zeros_like(won), torch.zeros_like(won)
    for j in range(h):
        owner, inside, every = row(j)
        won += torch.bincount(owner.flatten(), minlength=n)
        original += every.flatten(1).sum(1)
        kept += torch.bincount(owner[inside], minlength=n)
    seg_of = torch.zeros(n, dtype=torch.int32, device=logits.device)
    stuff_ids: dict[int, int] = {}
    for k in range(n):
        c = int(cur_classes[k])
        thing = bool(isthing[c])
        mask_area, original_area = int(won[k]), int(original[k])
        if mask_area == 0 or original_area == 0 or int(kept[k]) == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not thing and c in stuff_ids:
            seg_of[k] = stuff_ids[c]
            continue
        seg_id = len(segments) + 1
        if not thing:
            stuff_ids[c] = seg_id
        seg_of[k] = seg_id
        segments.append({"id": seg_id, "category_id": c, "isthing": thing, "score": float(cur_scores[k])})
    if segments:
        for j in range(h):
            owner, inside, _ = row(j)
            pan[j] = torch.where(inside, seg_of[owner], 0)[0]
    areas = torch.bincount(pan.flatten().long(), minlength=len(segments) + 1)
    for s in segments:
        s["area"] = int(areas[s["id"]])
    return pan, segments


def instance_inference(logits: torch.Tensor, mask_logits: torch.Tensor, isthing: Sequence[bool] | None = None,
                       topk: int = TOPK) -> dict[str, torch.Tensor]:
    """Top-``topk`` (query, class) pairs by class probability; with ``isthing``
    (panoptic models) only thing classes are kept afterwards. mask = logit > 0,
    score = class prob * mean mask prob inside the mask. Sorted by score."""
    q, c1 = logits.shape
    num_classes = c1 - 1
    probs = logits.softmax(-1)[:, :-1]
    k = min(topk, probs.numel())
    top, idx = probs.flatten().topk(k, sorted=True)
    labels = idx % num_classes
    queries = torch.div(idx, num_classes, rounding_mode="floor")
    if isthing is not None:
        if len(isthing) != num_classes:
            raise ValueError(f"isthing has {len(isthing)} entries for {num_classes} classes")
        things = torch.as_tensor(list(isthing), dtype=torch.bool, device=labels.device)
        keep = things[labels]
        top, labels, queries = top[keep], labels[keep], queries[keep]
    m = mask_logits[queries]
    binary = (m > 0).to(m.dtype)
    mask_score = (m.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * mask_score
    order = scores.argsort(descending=True, stable=True)
    return {"masks": binary[order].bool(), "labels": labels[order], "scores": scores[order],
            "queries": queries[order]}
