"""Results of segmenting one image with one vocabulary.

``SemanticResult``: a label map whose ids index the vocabulary, per-pixel
confidence and (on request) the full [C, H, W] score map. ``PanopticResult``:
segment ids with a category and score each (things are instances, stuff one
segment per class). ``InstanceResult``: scored binary masks. All carry the
vocabulary they were computed with and share the rendering in ``render.py``;
each saves PNG / JSON files with ``save(out_dir, stem)``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import render
from .files import atomic_write
from .vocab import Vocabulary


def confidence_of(scores: torch.Tensor) -> torch.Tensor:
    """[C, H, W] scores -> [H, W] confidence of the winning class in 0..1: the
    winner's share of the scores when they are non-negative (probabilities or
    SAN-style mask-weighted sums), else its softmax probability."""
    return labels_and_confidence(scores)[1]


def labels_and_confidence(scores: torch.Tensor, nonnegative: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, H, W] scores -> (argmax labels [H, W], ``confidence_of``), from one max over classes.
    ``nonnegative``: whether all of the image's scores are (default: those given)."""
    best, labels = scores.max(0)
    if scores.shape[0] == 1:
        return labels, torch.ones(scores.shape[1:], dtype=scores.dtype)
    if nonnegative if nonnegative is not None else bool(scores.amin() >= 0):
        return labels, (best / scores.sum(0).clamp_min(1e-12)).clamp(0, 1)
    return labels, 1.0 / torch.exp(scores - best).sum(0)        # the winner's softmax probability


def _save_png(im: Image.Image, path: Path) -> None:
    atomic_write(path, lambda f: im.save(f, format="PNG"))


def finite_json(obj):
    """``obj`` with every non-finite float (NaN, infinity) replaced by None, so that
    the JSON written is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _save_json(obj, path: Path) -> None:
    atomic_write(path, json.dumps(finite_json(obj), indent=1, allow_nan=False))


def _with_source(record: dict, source) -> dict:
    return {"source": str(source), **record} if source is not None else record


def _image_hw3(image: torch.Tensor | None, h: int, w: int) -> np.ndarray:
    if image is None:
        return np.full((h, w, 3), 128, np.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


@dataclass
class SemanticResult:
    labels: torch.Tensor            # LongTensor [H, W]: index into ``vocabulary``
    confidence: torch.Tensor        # float [H, W] in 0..1
    vocabulary: Vocabulary
    image: torch.Tensor | None = None    # uint8 [3, H, W], the input
    scores: torch.Tensor | None = None   # [C, H, W] before argmax (``return_scores=True``)
    model: str = ""
    extra: dict = field(default_factory=dict)   # model-specific maps (e.g. SegCLIP groups)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.labels.shape)

    def summary(self) -> dict:
        """Per class present: id, name, synonyms, pixel share, mean confidence."""
        labels = self.labels.reshape(-1)
        conf = self.confidence.reshape(-1).float()
        counts = torch.bincount(labels, minlength=len(self.vocabulary))
        conf_sum = torch.zeros(len(self.vocabulary), dtype=torch.float64).index_add_(0, labels, conf.double())
        total = labels.numel()
        classes = []
        for c in torch.nonzero(counts).flatten().tolist():
            classes.append({"id": c, "name": self.vocabulary.names[c], "synonyms": list(self.vocabulary.classes[c]),
                            "pixels": int(counts[c]), "share": round(float(counts[c]) / total, 6),
                            "mean_confidence": round(float(conf_sum[c] / counts[c]), 6)})
        classes.sort(key=lambda d: -d["share"])
        return {"model": self.model, "height": self.size[0], "width": self.size[1],
                "vocabulary": self.vocabulary.to_string(), "num_classes": len(self.vocabulary),
                "mean_confidence": round(float(conf.mean()), 6) if total else 0.0, "classes": classes}

    def label_image(self) -> Image.Image:
        """Label ids as a palette PNG (8-bit; 16-bit grey when there are more than 256 classes)."""
        lab = self.labels.cpu().numpy()
        if len(self.vocabulary) > 256:
            return Image.fromarray(lab.astype(np.uint16))
        im = Image.fromarray(lab.astype(np.uint8), mode="L").convert("P")
        pal = render.palette(len(self.vocabulary))
        im.putpalette(pal.reshape(-1).tolist() + [0] * (768 - pal.size))
        return im

    def overlay(self, alpha: float = 0.5, legend: bool = True, highlight: int | None = None) -> Image.Image:
        """The image with class colours blended in, class borders and a legend of the
        classes present (largest first). ``highlight`` shows only that class's region."""
        lab = self.labels.cpu().numpy()
        base = _image_hw3(self.image, *lab.shape)
        colours = render.palette(len(self.vocabulary))[lab]
        where = (lab == highlight) if highlight is not None else None
        out = render.blend(base, colours, alpha if highlight is None else 0.65, where)
        out[render.outlines(lab)] = (out[render.outlines(lab)] * 0.4).astype(np.uint8)
        if not legend:
            return Image.fromarray(out)
        pal = render.palette(len(self.vocabulary))
        entries = [(tuple(pal[c["id"]]), f"{c['name']}  {100 * c['share']:.1f}%") for c in self.summary()["classes"]]
        return render.with_legend(out, entries)

    def save(self, out_dir: str | os.PathLike, stem: str, source: str | None = None) -> dict[str, Path]:
        """Write ``<stem>_labels.png``, ``<stem>_overlay.png``, ``<stem>.json`` (and
        ``<stem>_scores.npy`` when scores are held); ``source``, the image's path, is
        recorded in the JSON."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png",
                 "summary": out / f"{stem}.json"}
        _save_png(self.label_image(), paths["labels"])
        _save_png(self.overlay(), paths["overlay"])
        _save_json(_with_source(self.summary(), source), paths["summary"])
        if self.scores is not None:
            paths["scores"] = out / f"{stem}_scores.npy"
            atomic_write(paths["scores"], lambda f: np.save(f, self.scores.cpu().numpy()))
        return paths


@dataclass
class PanopticResult:
    pan_seg: torch.Tensor          # IntTensor [H, W]: segment id, 0 = void (no segment)
    segments: list                 # dicts: id, category_id (index into vocabulary), isthing, score, area
    vocabulary: Vocabulary
    image: torch.Tensor | None = None
    model: str = ""

    def semantic(self) -> torch.Tensor:
        """LongTensor [H, W]: the category of each pixel, -1 where void."""
        out = torch.full(self.pan_seg.shape, -1, dtype=torch.long)
        for s in self.segments:
            out[self.pan_seg == s["id"]] = int(s["category_id"])
        return out

    def segments_info(self) -> list[dict]:
        """COCO panoptic ``segments_info`` entries (with area and bbox [x, y, w, h])."""
        pan = self.pan_seg.cpu().numpy()
        info = []
        for s in self.segments:
            ys, xs = np.nonzero(pan == s["id"])
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] \
                if len(xs) else [0, 0, 0, 0]
            info.append({"id": int(s["id"]), "category_id": int(s["category_id"]), "isthing": bool(s["isthing"]),
                         "iscrowd": 0, "score": round(float(s.get("score", 1.0)), 6), "area": int(len(xs)),
                         "bbox": bbox, "name": self.vocabulary.names[int(s["category_id"])]})
        return info

    def overlay(self, alpha: float = 0.5, legend: bool = True, highlight: int | None = None) -> Image.Image:
        """Class colours (each thing instance a shade of its class colour), segment
        outlines (white around things) and a legend of the classes present."""
        pan = self.pan_seg.cpu().numpy()
        base = _image_hw3(self.image, *pan.shape)
        pal = render.palette(len(self.vocabulary)).astype(np.int16)
        colours = np.zeros(pan.shape + (3,), np.uint8)
        things = np.zeros(pan.shape, bool)
        rng = np.random.default_rng(0)
        for s in self.segments:
            m = pan == s["id"]
            c = pal[int(s["category_id"])]
            if s["isthing"]:
                c = np.clip(c + rng.integers(-40, 41, 3), 0, 255)
                things |= m
            colours[m] = c
        where = pan > 0
        if highlight is not None:
            where &= self.semantic().numpy() == highlight
        out = render.blend(base, colours, alpha, where)
        edge = render.outlines(pan)
        out[edge & ~things] = (out[edge & ~things] * 0.4).astype(np.uint8)
        thing_edge = edge & (things | np.roll(things, -1, 0) | np.roll(things, -1, 1))
        out[thing_edge] = 255
        if not legend:
            return Image.fromarray(out)
        area: dict[int, int] = {}
        for s in self.segments_info():
            area[s["category_id"]] = area.get(s["category_id"], 0) + s["area"]
        entries = [(tuple(int(v) for v in pal[c]), f"{self.vocabulary.names[c]}  {100 * a / pan.size:.1f}%")
                   for c, a in sorted(area.items(), key=lambda kv: -kv[1])]
        return render.with_legend(out, entries)

    def to_coco(self, image_id=0, file_name: str = "") -> dict:
        """A COCO panoptic annotation record plus the categories (vocabulary indices)."""
        return {"image_id": image_id, "file_name": file_name, "segments_info": self.segments_info(),
                "categories": [{"id": i, "name": n} for i, n in enumerate(self.vocabulary.names)]}

    def save(self, out_dir: str | os.PathLike, stem: str, source: str | None = None) -> dict[str, Path]:
        """Write ``<stem>_panoptic.png`` (COCO id -> RGB), ``<stem>_panoptic.json`` (with
        ``source``, the image's path, when given), ``<stem>_overlay.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"panoptic": out / f"{stem}_panoptic.png", "summary": out / f"{stem}_panoptic.json",
                 "overlay": out / f"{stem}_overlay.png"}
        _save_png(Image.fromarray(render.ids_to_rgb(self.pan_seg.cpu().numpy())), paths["panoptic"])
        _save_json(_with_source({**self.to_coco(stem, paths["panoptic"].name), "model": self.model,
                                 "vocabulary": self.vocabulary.to_string()}, source), paths["summary"])
        _save_png(self.overlay(), paths["overlay"])
        return paths


@dataclass
class InstanceResult:
    masks: torch.Tensor            # BoolTensor [N, H, W]
    labels: torch.Tensor           # LongTensor [N]: index into vocabulary
    scores: torch.Tensor           # [N]
    vocabulary: Vocabulary
    image: torch.Tensor | None = None
    model: str = ""

    def to_coco(self, image_id=0) -> list[dict]:
        """COCO results: RLE segmentation (pycocotools), bbox, category_id, score."""
        from pycocotools import mask as mask_util
        out = []
        for m, c, s in zip(self.masks.cpu().numpy(), self.labels.tolist(), self.scores.tolist()):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            bbox = mask_util.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode("ascii")
            out.append({"image_id": image_id, "category_id": int(c), "segmentation": rle, "bbox": bbox,
                        "score": round(float(s), 6), "name": self.vocabulary.names[int(c)]})
        return out

    def overlay(self, alpha: float = 0.5, legend: bool = True, min_score: float = 0.5) -> Image.Image:
        """Masks scoring at least ``min_score`` painted highest score last, outlined in white."""
        h, w = self.masks.shape[-2:]
        base = _image_hw3(self.image, h, w)
        ids = np.zeros((h, w), np.int64)
        keep = [i for i in torch.argsort(self.scores).tolist() if float(self.scores[i]) >= min_score]
        for i in keep:
            ids[self.masks[i].cpu().numpy()] = i + 1
        pal = render.palette(len(self.vocabulary))
        colours = np.zeros((h, w, 3), np.uint8)
        for i in keep:
            colours[ids == i + 1] = pal[int(self.labels[i])]
        out = render.blend(base, colours, alpha, ids > 0)
        out[render.outlines(ids)] = 255
        entries = [(tuple(pal[int(self.labels[i])]), f"{self.vocabulary.names[int(self.labels[i])]}  "
                    f"{float(self.scores[i]):.2f}") for i in reversed(keep)]
        return render.with_legend(out, entries) if legend else Image.fromarray(out)

    def save(self, out_dir: str | os.PathLike, stem: str, source: str | None = None) -> dict[str, Path]:
        """Write ``<stem>_instances.json`` (COCO results with RLE; ``source``, the image's
        path, when given) and ``<stem>_overlay.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"instances": out / f"{stem}_instances.json", "overlay": out / f"{stem}_overlay.png"}
        _save_json(_with_source({"model": self.model, "vocabulary": self.vocabulary.to_string(),
                                 "instances": self.to_coco(stem)}, source), paths["instances"])
        _save_png(self.overlay(), paths["overlay"])
        return paths
