"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former).

The cost of pairing query q with target t is

    w_class * (-p_q(label_t)) + w_mask * BCE(m_q, t) + w_dice * Dice(m_q, t)

where p is the softmax over the K+1 class logits and the mask terms are
computed on ``num_points`` points drawn uniformly at random (the same points
for every mask of one image). ``scipy.optimize.linear_sum_assignment`` solves
the assignment.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .points import point_sample


def pairwise_sigmoid_ce(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every logit row against every target row.
    ``inputs`` [Q, P] logits, ``targets`` [T, P] in 0..1 -> [Q, T]."""
    p = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / p


def pairwise_dice(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss 1 - (2|a.b| + 1) / (|a| + |b| + 1) of sigmoid(inputs) [Q, P]
    against targets [T, P] -> [Q, T]."""
    x = inputs.sigmoid()
    num = 2 * x @ targets.T
    den = x.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


class HungarianMatcher(nn.Module):
    """One-to-one matching per image.

    ``outputs``: dict with ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, h, w];
    ``targets``: list of B dicts with ``labels`` LongTensor[N] (0..K-1) and
    ``masks`` [N, H, W] (bool or float). Returns B pairs (query idx, target idx),
    LongTensors of length min(Q, N), query indices ascending.
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 112 * 112):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one matching cost must be non-zero")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                    tgt_masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """[Q, N] cost for one image: ``logits`` [Q, K+1], ``masks`` [Q, h, w],
        ``tgt_masks`` [N, H, W], ``coords`` [1, P, 2] shared points (x, y in 0..1)."""
        prob = logits.float().softmax(-1)
        cost_class = -prob[:, labels]
        p_out = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
        p_tgt = point_sample(tgt_masks[:, None].float(), coords.expand(tgt_masks.shape[0], -1, -1))[:, 0]
        return (self.cost_mask * pairwise_sigmoid_ce(p_out, p_tgt)
                + self.cost_class * cost_class
                + self.cost_dice * pairwise_dice(p_out, p_tgt))

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} predictions but {len(targets)} targets")
        indices = []
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for b, tgt in enumerate(targets):
                labels = tgt["labels"].to(logits.device)
                if labels.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.long)
                    indices.append((empty, empty.clone()))
                    continue
                coords = torch.rand(1, self.num_points, 2, device=logits.device)
                c = self.cost_matrix(logits[b], masks[b], labels, tgt["masks"].to(masks.device), coords)
                qi, ti = linear_sum_assignment(c.cpu().numpy())
                indices.append((torch.as_tensor(qi, dtype=torch.long), torch.as_tensor(ti, dtype=torch.long)))
        return indices
