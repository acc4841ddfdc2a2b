"""Confusion summary of an evaluation and its two pictures (drawn with PIL): the
row-normalised confusion matrix and per-class IoU bars."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...render import _font, shorten


def confusion_summary(mat: torch.Tensor, names: Sequence[str], top: int = 10, per_class: int = 3) -> dict:
    """``top``: the largest off-diagonal cells as {class, predicted, pixels, share} (share of the
    ground-truth class's pixels, percent); ``per_class``: for each class in the ground truth its
    pixels, its recall (percent) and the ``per_class`` classes it is most often taken for."""
    m = mat.double().numpy()
    gt = m.sum(1)
    off = m.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(int(k // m.shape[1]), int(k % m.shape[1])) for k in order]
    out = {"top": [{"class": names[g], "predicted": names[p], "pixels": int(m[g, p]),
                    "share": float(m[g, p] / gt[g] * 100)} for g, p in pairs if m[g, p] > 0], "per_class": {}}
    for g in np.nonzero(gt)[0]:
        row = off[g]
        worst = [int(p) for p in np.argsort(-row, kind="stable")[:per_class] if row[p] > 0]
        out["per_class"][names[g]] = {"pixels": int(gt[g]), "recall": float(m[g, g] / gt[g] * 100),
                                      "confused_with": [{"class": names[p], "share": float(row[p] / gt[g] * 100)}
                                                        for p in worst]}
    return out


def confusion_png(mat: torch.Tensor, names: Sequence[str], path: str | Path, max_classes: int = 40,
                  cell: int | None = None) -> Path:
    """Row-normalised confusion matrix (rows ground truth, columns prediction; the
    ``max_classes`` classes with the most ground-truth or predicted pixels) as a PNG; cells of
    ``cell`` px (default: 36 down to 12 as classes grow), percentages written in cells >= 28 px."""
    m = mat.double().numpy()
    weight = m.sum(1) + m.sum(0)
    keep = [int(i) for i in np.argsort(-weight, kind="stable")[:max_classes] if weight[i] > 0]
    keep.sort()
    sub = m[np.ix_(keep, keep)]
    share = sub / np.maximum(m[keep].sum(1, keepdims=True), 1)
    font = _font(11)
    label_w = 150
    n = len(keep)
    cell = cell or max(12, min(36, 640 // max(n, 1)))
    top_h = 150
    caption = "rows: ground truth, columns: prediction (share of the row's pixels)"
    width = max(label_w + n * cell + 10, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font)) + 10)
    img = Image.new("RGB", (width, top_h + n * cell + 30), "white")
    d = ImageDraw.Draw(img)
    for r in range(n):
        d.text((4, top_h + r * cell + max(cell // 2 - 6, 1)), shorten(names[keep[r]], font, label_w - 8),
               fill="black", font=font)
        for c in range(n):
            v = float(share[r, c])
            col = (int(255 * (1 - v)), int(255 * (1 - v * 0.6)), 255) if r != c else \
                (int(255 * (1 - v)), 255, int(255 * (1 - v)))
            x, y = label_w + c * cell, top_h + r * cell
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=col, outline=(220, 220, 220))
            if cell >= 28 and v >= 0.005:
                d.text((x + 3, y + cell // 2 - 6), f"{v * 100:.0f}", fill="black" if v < 0.6 else "white", font=font)
    col_img = Image.new("RGB", (top_h, n * cell), "white")     # column names, drawn then rotated
    cd = ImageDraw.Draw(col_img)
    for c in range(n):
        cd.text((4, c * cell + max(cell // 2 - 6, 1)), shorten(names[keep[c]], font, top_h - 8), fill="black",
                font=font)
    img.paste(col_img.rotate(90, expand=True), (label_w, 0))
    d.text((4, top_h + n * cell + 8), caption, fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)


def iou_bars_png(per_class_iou: dict, path: str | Path, max_classes: int = 60) -> Path:
    """Horizontal bars of per-class IoU (classes that occur, lowest first, at most ``max_classes``)."""
    items = sorted(((v, k) for k, v in per_class_iou.items() if v is not None))[:max_classes]
    font = _font(12)
    label_w, bar_w, row = 180, 300, 18
    img = Image.new("RGB", (label_w + bar_w + 60, row * len(items) + 40), "white")
    d = ImageDraw.Draw(img)
    for i, (v, k) in enumerate(items):
        y = 10 + i * row
        d.text((4, y + 2), shorten(k, font, label_w - 8), fill="black", font=font)
        d.rectangle([label_w, y + 2, label_w + int(bar_w * v / 100), y + row - 3], fill=(0, 130, 200))
        d.text((label_w + int(bar_w * v / 100) + 4, y + 2), f"{v:.1f}", fill="black", font=font)
    d.text((4, 14 + len(items) * row), "IoU (%) per class, lowest first", fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
