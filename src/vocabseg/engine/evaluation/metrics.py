"""Segmentation metrics with integer statistics, so that sums over images (and
over processes, see ``distributed.py``) are exact and order-independent.

Semantic (``ConfusionMatrix`` + ``semantic_metrics``): one int64 confusion
matrix over the whole split, rows = ground truth, columns = prediction; pixels
whose ground truth is the ignore label are skipped. IoU_c = TP / (TP + FP + FN).
Two averages are in use and both are reported, named:

- ``miou_gt``: mean IoU over classes present in the ground truth (detectron2
  built from source after July 2022);
- ``miou_any``: mean IoU over classes present in the ground truth or in the
  prediction, a predicted-only class counting 0 (detectron2 v0.6 wheels, mmseg).

plus ``fwiou`` (IoU weighted by ground-truth pixel frequency), ``macc`` (mean
per-class recall over classes in the ground truth) and ``pacc`` (pixel accuracy).
All are percentages. Per-class IoU is ``None`` for a class absent from both.

Panoptic (``PanopticStats``): panopticapi's ``pq_compute`` semantics. A ground-
truth and a predicted segment of the same category match when IoU > 0.5, where
the union leaves out the predicted pixels that fall on ground-truth VOID (id 0);
crowd ground truth is never matched and its unmatched predictions of the same
category are forgiven, as are predictions more than half on VOID or on crowd of
their category. Per category: TP, FP, FN and the sum of matched IoUs, the latter
in fixed point (units of 2^-32) so that it sums exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IOU_SCALE = 2 ** 32          # fixed-point unit of PanopticStats' IoU sums
OFFSET = 256 * 256 * 256     # panoptic ids are below 2^24 (R + 256 G + 256^2 B)
VOID = 0


class ConfusionMatrix:
    """int64 [C, C] counts, ``mat[g, p]`` = pixels of ground truth g predicted p."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """``pred``: label map [H, W] in 0..C-1; ``gt``: [H, W] in 0..C-1 or the ignore label."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")
        c = self.num_classes
        pred, gt = pred.reshape(-1).long().cpu(), gt.reshape(-1).long().cpu()
        valid = gt != self.ignore_index
        pred, gt = pred[valid], gt[valid]
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= c):
            bad = gt[(gt < 0) | (gt >= c)][0].item()
            raise ValueError(f"ground truth holds label {bad}: expected 0..{c - 1} or the ignore label "
                             f"{self.ignore_index}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
            raise ValueError(f"prediction holds a label outside 0..{c - 1}")
        self.mat += torch.bincount(gt * c + pred, minlength=c * c).view(c, c)

    def metrics(self, names: Sequence[str] | None = None) -> dict:
        return semantic_metrics(self.mat, names)


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) * 100 if x.size else None


def semantic_metrics(mat: torch.Tensor, names: Sequence[str] | None = None) -> dict:
    """Metrics of a confusion matrix [C, C] (rows ground truth): ``miou_gt``,
    ``miou_any``, ``fwiou``, ``macc``, ``pacc`` (percent; None when nothing
    qualifies), ``per_class_iou`` (name -> percent or None), ``classes_gt`` /
    ``classes_any`` (how many classes each mean is over) and ``pixels``."""
    m = mat.double().numpy()
    tp = np.diag(m)
    gt, pred = m.sum(1), m.sum(0)
    union = gt + pred - tp
    in_gt, in_any = gt > 0, union > 0
    iou = np.full(len(tp), np.nan)
    iou[in_any] = tp[in_any] / union[in_any]
    total = gt.sum()
    names = list(names) if names is not None else [str(i) for i in range(len(tp))]
    if len(names) != len(tp):
        raise ValueError(f"{len(names)} class names for a {len(tp)}-class confusion matrix")
    return {
        "miou_gt": _mean(iou[in_gt]),
        "miou_any": _mean(iou[in_any]),
        "fwiou": float((gt[in_gt] / total * iou[in_gt]).sum()) * 100 if total else None,
        "macc": _mean(tp[in_gt] / gt[in_gt]),
        "pacc": float(tp.sum() / total) * 100 if total else None,
        "classes_gt": int(in_gt.sum()),
        "classes_any": int(in_any.sum()),
        "pixels": int(total),
        "per_class_iou": {n: (None if np.isnan(v) else float(v) * 100) for n, v in zip(names, iou)},
    }


# --- panoptic quality -------------------------------------------------------------
def _segments(segments: Sequence[dict], what: str) -> dict:
    out = {}
    for s in segments:
        sid = int(s["id"])
        if sid == VOID or sid >= OFFSET:
            raise ValueError(f"{what} segment id {sid} is outside 1..{OFFSET - 1}")
        if sid in out:
            raise ValueError(f"{what} segment id {sid} is listed twice")
        out[sid] = s
    return out


def pq_single(gt_pan, gt_segments: Sequence[dict], pred_pan, pred_segments: Sequence[dict],
              num_classes: int) -> torch.Tensor:
    """One image's statistics: int64 [C, 4] columns TP, FP, FN, IoU sum (fixed point).

    ``*_pan``: integer [H, W] segment ids (0 = VOID); ``*_segments``: dicts with
    ``id`` and ``category_id`` (0..C-1); ground truth also ``iscrowd`` and
    ``area`` (its pixel count when absent or 0, else the given area, as
    panopticapi reads it from the JSON). A predicted id in the map but not in
    the list (other than 0), or listed but absent from the map, is an error."""
    gt_pan = np.asarray(torch.as_tensor(gt_pan), dtype=np.int64)
    pred_pan = np.asarray(torch.as_tensor(pred_pan), dtype=np.int64)
    if gt_pan.shape != pred_pan.shape:
        raise ValueError(f"panoptic maps differ in size: {gt_pan.shape} vs {pred_pan.shape}")
    gt_seg, pred_seg = _segments(gt_segments, "ground-truth"), _segments(pred_segments, "predicted")
    for s in list(gt_seg.values()) + list(pred_seg.values()):
        if not 0 <= int(s["category_id"]) < num_classes:
            raise ValueError(f"segment {s['id']} has category {s['category_id']}, expected 0..{num_classes - 1}")
    ids, counts = np.unique(pred_pan, return_counts=True)
    pred_area = dict(zip(ids.tolist(), counts.tolist()))
    unknown = [i for i in pred_area if i != VOID and i not in pred_seg]
    if unknown:
        raise ValueError(f"predicted segment ids {unknown[:5]} are in the map but not in the segment list")
    absent = [i for i in pred_seg if i not in pred_area]
    if absent:
        raise ValueError(f"predicted segment ids {absent[:5]} are listed but cover no pixel")
    if gt_pan.max(initial=0) >= OFFSET or pred_pan.max(initial=0) >= OFFSET or gt_pan.min(initial=0) < 0:
        raise ValueError(f"panoptic ids must lie in 0..{OFFSET - 1}")
    ids, counts = np.unique(gt_pan, return_counts=True)
    gt_count = dict(zip(ids.tolist(), counts.tolist()))
    gt_area = {i: int(s.get("area") or 0) or gt_count.get(i, 0) for i, s in gt_seg.items()}
    pairs, inter = np.unique(gt_pan * OFFSET + pred_pan, return_counts=True)
    overlap = {(int(k) // OFFSET, int(k) % OFFSET): int(n) for k, n in zip(pairs, inter)}

    stats = torch.zeros(num_classes, 4, dtype=torch.int64)
    gt_hit, pred_hit = set(), set()
    for (g, p), n in overlap.items():
        if g not in gt_seg or p not in pred_seg:
            continue
        gs, ps = gt_seg[g], pred_seg[p]
        if gs.get("iscrowd", 0) or gs["category_id"] != ps["category_id"]:
            continue
        union = pred_area[p] + gt_area[g] - n - overlap.get((VOID, p), 0)
        iou = n / union
        if iou > 0.5:
            c = int(gs["category_id"])
            stats[c, 0] += 1
            stats[c, 3] += int(round(iou * IOU_SCALE))
            gt_hit.add(g)
            pred_hit.add(p)
    crowd = {}
    for g, gs in gt_seg.items():
        if g in gt_hit:
            continue
        if gs.get("iscrowd", 0):
            crowd[int(gs["category_id"])] = g
            continue
        stats[int(gs["category_id"]), 2] += 1
    for p, ps in pred_seg.items():
        if p in pred_hit:
            continue
        c = int(ps["category_id"])
        ignored = overlap.get((VOID, p), 0)
        if c in crowd:
            ignored += overlap.get((crowd[c], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats[c, 1] += 1
    return stats


class PanopticStats:
    """Accumulates ``pq_single`` over images: int64 [C, 4] (TP, FP, FN, IoU sum)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.stats = torch.zeros(num_classes, 4, dtype=torch.int64)

    def update(self, gt_pan, gt_segments, pred_pan, pred_segments) -> None:
        self.stats += pq_single(gt_pan, gt_segments, pred_pan, pred_segments, self.num_classes)

    def metrics(self, thing_ids: Sequence[int], names: Sequence[str] | None = None) -> dict:
        return panoptic_metrics(self.stats, thing_ids, names)


def panoptic_metrics(stats: torch.Tensor, thing_ids: Sequence[int], names: Sequence[str] | None = None) -> dict:
    """PQ / SQ / RQ (percent) averaged over the categories that occur (TP + FP + FN
    > 0) among ``all``, ``things`` and ``stuff``, each with ``n`` categories;
    ``per_class`` name -> {pq, sq, rq} (None for categories that never occur)."""
    s = stats.double().numpy()
    tp, fp, fn, iou = s[:, 0], s[:, 1], s[:, 2], s[:, 3] / IOU_SCALE
    c = len(tp)
    names = list(names) if names is not None else [str(i) for i in range(c)]
    occurs = tp + fp + fn > 0
    denom = np.where(occurs, tp + 0.5 * fp + 0.5 * fn, 1.0)
    pq, rq = iou / denom, tp / denom
    sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
    things = np.zeros(c, dtype=bool)
    things[list(thing_ids)] = True
    out = {}
    for key, sel in (("all", np.ones(c, dtype=bool)), ("things", things), ("stuff", ~things)):
        k = sel & occurs
        n = int(k.sum())
        out[key] = {"pq": float(pq[k].mean()) * 100 if n else None, "sq": float(sq[k].mean()) * 100 if n else None,
                    "rq": float(rq[k].mean()) * 100 if n else None, "n": n}
    out["per_class"] = {names[i]: ({"pq": float(pq[i]) * 100, "sq": float(sq[i]) * 100, "rq": float(rq[i]) * 100}
                                   if occurs[i] else None) for i in range(c)}
    return out
