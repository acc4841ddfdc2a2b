"""Instance mask AP with pycocotools (COCOeval, iouType "segm") on panoptic benchmarks.

Ground-truth instances are the thing segments of the panoptic annotation
(crowd segments become ``iscrowd`` regions); predictions are
``dict(masks=BoolTensor[N, H, W], scores=Tensor[N], labels=LongTensor[N])``
with contiguous category ids. Images are numbered by their dataset index.
"""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def gt_instances(index: int, pan_seg, segments_info: Sequence[dict], thing_ids: Sequence[int]) -> dict:
    """COCO image record and annotations (RLE) for the thing segments of one image."""
    pan = np.asarray(torch.as_tensor(pan_seg))
    things = set(int(t) for t in thing_ids)
    anns = []
    for s in segments_info:
        if int(s["category_id"]) not in things:
            continue
        m = pan == int(s["id"])
        if not m.any():
            continue
        rle = _rle(m)
        anns.append({"image_id": index, "category_id": int(s["category_id"]), "segmentation": rle,
                     "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                     "iscrowd": int(s.get("iscrowd", 0))})
    return {"image": {"id": index, "height": int(pan.shape[0]), "width": int(pan.shape[1])}, "annotations": anns}


def detections(index: int, instances: dict) -> list[dict]:
    """COCO result records for one image's predicted instances."""
    masks = instances["masks"].bool().cpu().numpy()
    scores = instances["scores"].float().cpu().tolist()
    labels = instances["labels"].long().cpu().tolist()
    if not (len(masks) == len(scores) == len(labels)):
        raise ValueError(f"instances disagree in length: {len(masks)} masks, {len(scores)} scores, {len(labels)} labels")
    return [{"image_id": index, "category_id": int(c), "segmentation": _rle(m), "score": float(s)}
            for m, s, c in zip(masks, scores, labels)]


def mask_ap(gts: Sequence[dict], dets: Sequence[dict], thing_ids: Sequence[int],
            names: Sequence[str] | None = None) -> dict:
    """COCO mask AP (percent): ``ap``, ``ap50``, ``ap75``, ``aps``, ``apm``, ``apl``
    over the thing categories. ``gts``: ``gt_instances`` outputs; ``dets``: all
    ``detections`` records."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    anns = [a for g in gts for a in g["annotations"]]
    for i, a in enumerate(anns):
        a["id"] = i + 1
    cats = [{"id": int(c), "name": names[c] if names else str(c)} for c in thing_ids]
    keys = ("ap", "ap50", "ap75", "aps", "apm", "apl")
    if not anns:
        return {k: None for k in keys}
    if not dets:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [g["image"] for g in gts], "annotations": anns, "categories": cats}
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) * 100 if v >= 0 else None) for k, v in zip(keys, ev.stats[:6])}
