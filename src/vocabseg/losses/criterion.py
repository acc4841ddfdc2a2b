"""Mask2Former set criterion: Hungarian matching, then class cross-entropy
(no-object class down-weighted), sigmoid BCE and Dice on importance-sampled
points for matched masks, repeated for every auxiliary output (deep supervision).

Predictions (a dict):
    ``pred_logits`` [B, Q, K+1] (last column = no object), ``pred_masks``
    [B, Q, h, w] mask logits, optional ``aux_outputs``: list of dicts with the
    same two keys.
Targets: list of B dicts with ``labels`` LongTensor[N] in 0..K-1 and
``masks`` [N, H, W] (bool / float); masks of different images may differ in
size and are zero-padded bottom-right to a common size.

``SetCriterion(...)(outputs, targets)`` returns unweighted losses named
``loss_ce``, ``loss_mask``, ``loss_dice`` and ``loss_ce_0``, ... for auxiliary
output 0, ...; ``weighted(losses)`` multiplies them by the weights (auxiliary
losses weighted like the main ones).

Normalisers: the mask losses are sums over target masks divided by the number
of target masks (all-reduced and averaged over processes, as Mask2Former), the
class loss a no-object-weighted mean over images x queries. Gradient
accumulation splits a batch into micro-batches whose normalisers are those of
the whole step: ``totals(counts, num_queries)`` gives them from the targets'
mask counts alone, and ``forward(outputs, targets, norm)`` with ``norm`` = the
step's totals (per process) and ``share`` = this micro-batch's share of the
process's images returns losses that, weighted by ``share`` and summed over
the micro-batches, equal the losses of the whole batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .matcher import HungarianMatcher
from .points import point_sample, uncertain_point_coords


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over rows of 1 - (2 a.b + 1) / (|a| + |b| + 1), a = sigmoid(inputs), / num_masks.
    ``inputs`` logits [M, P], ``targets`` [M, P] in 0..1."""
    x = inputs.sigmoid().flatten(1)
    num = 2 * (x * targets).sum(-1)
    den = x.sum(-1) + targets.sum(-1)
    return (1 - (num + 1) / (den + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Per-row mean BCE-with-logits, summed over rows, / num_masks. Shapes [M, P]."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def pad_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad a list of [N_i, H_i, W_i] masks to the largest H, W and
    concatenate -> [sum N_i, H, W]."""
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    out = []
    for m in masks:
        out.append(F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) if m.shape[-2:] != (h, w) else m)
    return torch.cat(out, dim=0)


class SetCriterion(nn.Module):
    """Mask-classification losses.

    ``eos_coef`` weights the no-object class in the cross-entropy; the number of
    classes K is read from ``pred_logits`` (open-vocabulary models change it
    with the vocabulary). ``num_points`` / ``oversample_ratio`` /
    ``importance_sample_ratio`` drive PointRend sampling of the mask losses.
    ``weights`` maps base loss names to weights (``loss_ce``, ``loss_mask``,
    ``loss_dice``).
    """

    def __init__(self, matcher: HungarianMatcher, weights: dict[str, float], eos_coef: float = 0.1,
                 num_points: int = 112 * 112, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75):
        super().__init__()
        unknown = set(weights) - {"loss_ce", "loss_mask", "loss_dice"}
        if unknown:
            raise ValueError(f"unknown loss names {sorted(unknown)}; use loss_ce, loss_mask, loss_dice")
        self.matcher = matcher
        self.weights = dict(weights)
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    # --- the two loss families ---------------------------------------------
    def totals(self, counts: list[int], num_queries: int) -> dict[str, float]:
        """Additive normalisers of images with ``counts`` target masks each under ``num_queries``
        queries: ``masks`` (their number) and ``ce_weight`` (the class loss's sum of weights:
        1 for each matched query, min(queries, masks), ``eos_coef`` for every other query)."""
        matched = [min(num_queries, int(n)) for n in counts]
        return {"masks": float(sum(int(n) for n in counts)),
                "ce_weight": float(sum(m + self.eos_coef * (num_queries - m) for m in matched))}

    def loss_labels(self, outputs: dict, targets: list[dict], indices, ce_weight: float | None = None) -> torch.Tensor:
        logits = outputs["pred_logits"].float()
        b, q, k1 = logits.shape
        target_classes = torch.full((b, q), k1 - 1, dtype=torch.long, device=logits.device)
        bi, qi = _src_index(indices)
        if bi.numel():
            labels = torch.cat([t["labels"].to(logits.device)[j] for t, (_, j) in zip(targets, indices)])
            target_classes[bi.to(logits.device), qi.to(logits.device)] = labels
        weight = torch.ones(k1, device=logits.device)
        weight[-1] = self.eos_coef
        if ce_weight is not None:     # the weighted sum over the normaliser of the whole step
            return F.cross_entropy(logits.transpose(1, 2), target_classes, weight, reduction="sum") / ce_weight
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def loss_masks(self, outputs: dict, targets: list[dict], indices, num_masks: float):
        pred = outputs["pred_masks"]
        bi, qi = _src_index(indices)
        if bi.numel() == 0:  # no target anywhere: keep the graph, add nothing
            zero = pred.sum() * 0.0
            return zero, zero
        src = pred[bi.to(pred.device), qi.to(pred.device)][:, None]           # [M, 1, h, w]
        offsets, start = [], 0
        for t in targets:
            offsets.append(start)
            start += len(t["labels"])
        tgt_rows = torch.cat([j + off for (_, j), off in zip(indices, offsets)]).to(pred.device)
        tgt = pad_masks([t["masks"].to(pred.device) for t in targets]).to(src.dtype)[tgt_rows][:, None]
        with torch.no_grad():
            coords = uncertain_point_coords(src.detach(), self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            labels = point_sample(tgt, coords)[:, 0]
        logits = point_sample(src, coords)[:, 0]
        return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    # --- entry points --------------------------------------------------------
    def forward(self, outputs: dict, targets: list[dict], norm: dict | None = None) -> dict[str, torch.Tensor]:
        """``norm`` (gradient accumulation): ``masks`` and ``ce_weight`` of the whole step (``totals``
        summed over its micro-batches and processes, / processes) and ``share`` (this micro-batch's
        images / the process's images in the step); None: the normalisers of ``targets``."""
        ce_weight = None
        if norm is None:
            device = outputs["pred_logits"].device
            num_masks = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
            world = 1
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(num_masks)
                world = dist.get_world_size()
            num_masks = torch.clamp(num_masks / world, min=1).item()
        else:
            num_masks = max(float(norm["masks"]), 1.0) * norm["share"]
            ce_weight = float(norm["ce_weight"]) * norm["share"]
        losses = self._one(outputs, targets, num_masks, "", ce_weight)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._one(aux, targets, num_masks, f"_{i}", ce_weight))
        return losses

    def _one(self, outputs: dict, targets: list[dict], num_masks: float, suffix: str,
             ce_weight: float | None = None) -> dict:
        indices = self.matcher(outputs, targets)
        mask, dice = self.loss_masks(outputs, targets, indices, num_masks)
        return {f"loss_ce{suffix}": self.loss_labels(outputs, targets, indices, ce_weight),
                f"loss_mask{suffix}": mask, f"loss_dice{suffix}": dice}

    def weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multiply each loss by the weight of its base name; losses without a weight are dropped."""
        out = {}
        for name, value in losses.items():
            base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
            if base in self.weights:
                out[name] = value * self.weights[base]
        return out


def _src_index(indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched pair."""
    if not indices:
        z = torch.zeros(0, dtype=torch.long)
        return z, z
    bi = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    qi = torch.cat([src for src, _ in indices])
    return bi, qi


def mask_criterion(loss_weights: dict | None = None, no_object_weight: float = 0.1,
                   train_points: int = 112 * 112, oversample_ratio: float = 3.0,
                   importance_sample_ratio: float = 0.75) -> SetCriterion:
    """The Mask2Former criterion SAN and FC-CLIP train with: Hungarian matching and
    losses weighted by ``loss_weights`` (default class 2, mask 5, Dice 5)."""
    w = loss_weights or {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    matcher = HungarianMatcher(w["loss_ce"], w["loss_mask"], w["loss_dice"], train_points)
    return SetCriterion(matcher, w, no_object_weight, train_points, oversample_ratio, importance_sample_ratio)
