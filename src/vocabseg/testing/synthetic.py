"""Tiny synthetic datasets written in the real on-disk layouts, so the real readers
(and prepare converters, see ``synthetic_raw.py``) are what tests exercise.

Content is learnable: every class has its own colour (``class_color``) and shape
(rectangle / ellipse / triangle by id % 3); an image is a "stuff" fill plus a few
shapes, with mild pixel noise, and one small mid-grey unlabeled patch on datasets
that have an ignore label. Everything is deterministic given ``seed``.

Benchmarks sharing files are written together from the same scenes: voc20 + voc21,
pc59 + pc60, ade150 + ade-panoptic, coco-stuff + coco-object + coco-panoptic.

    >>> truth = write_benchmark("ade150", root, num_images=4)  # -> list of dict
    >>> get_dataset("ade150", root=root)[0]["sem_seg"]          # == truth[0]["sem_seg"]
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data import idmaps
from ..data.benchmarks import BENCHMARKS

UNLABELED = -1
GREY = (128, 128, 128)


def class_color(c: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour for class id ``c`` (never mid-grey)."""
    h = (c * 0.6180339887) % 1.0
    s = 0.55 + 0.45 * ((c * 0.3819660113) % 1.0)
    v = 0.55 + 0.45 * ((c * 0.7548776662) % 1.0)
    return tuple(int(round(255 * x)) for x in colorsys.hsv_to_rgb(h, s, v))


@dataclass
class Scene:
    """``labels``: int64 [H, W] canonical class ids (UNLABELED = -1); ``image``: uint8
    [H, W, 3]; ``instances``: one dict(class_id, mask bool [H, W]) per visible shape,
    plus the fill as ``fill``."""
    labels: np.ndarray
    image: np.ndarray
    fill: int
    instances: list = field(default_factory=list)


def make_scene(rng: np.random.Generator, h: int, w: int, fill: int, shape_classes: Sequence[int],
               num_shapes: tuple[int, int] = (1, 3), unlabeled: bool = True, noise: float = 3.0) -> Scene:
    labels = np.full((h, w), fill, dtype=np.int64)
    yy, xx = np.mgrid[0:h, 0:w]
    owner = np.full((h, w), -1, dtype=np.int64)
    shapes = []
    for k in range(int(rng.integers(num_shapes[0], num_shapes[1] + 1))):
        c = int(rng.choice(shape_classes))
        sh, sw = int(rng.integers(h // 4, h // 2 + 1)), int(rng.integers(w // 4, w // 2 + 1))
        y0, x0 = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        kind = c % 3
        if kind == 0:
            m = (yy >= y0) & (yy < y0 + sh) & (xx >= x0) & (xx < x0 + sw)
        elif kind == 1:
            m = ((yy - y0 - sh / 2 + 0.5) / (sh / 2)) ** 2 + ((xx - x0 - sw / 2 + 0.5) / (sw / 2)) ** 2 <= 1
        else:  # triangle with apex at the top centre
            t = (yy - y0 + 0.5) / sh
            m = (t >= 0) & (t <= 1) & (np.abs(xx - x0 - sw / 2 + 0.5) <= t * sw / 2)
        labels[m] = c
        owner[m] = k
        shapes.append(c)
    instances = [{"class_id": c, "mask": owner == k} for k, c in enumerate(shapes) if (owner == k).any()]
    palette = {c: class_color(c) for c in np.unique(labels)}
    image = np.zeros((h, w, 3), dtype=np.float64)
    for c, col in palette.items():
        image[labels == c] = col
    if unlabeled:
        ph, pw = max(h // 8, 2), max(w // 8, 2)
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        labels[y0:y0 + ph, x0:x0 + pw] = UNLABELED
        image[y0:y0 + ph, x0:x0 + pw] = GREY
        for inst in instances:
            inst["mask"][y0:y0 + ph, x0:x0 + pw] = False
        instances = [i for i in instances if i["mask"].any()]
    image = np.clip(np.round(image + rng.normal(0, noise, image.shape)), 0, 255).astype(np.uint8)
    return Scene(labels, image, fill, instances)


# --- families: canonical class space, fill / shape classes, members ------------------------------
def _spread(ids: Sequence[int], k: int) -> list[int]:
    ids = list(ids)
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(k, len(ids))).round()]


_COCO_STUFF_SET = set(idmaps.COCO_STUFF_IDS)
_COCO_THINGS = list(idmaps.COCO_PANOPTIC_THING_IDS)
_COCO_STUFF_FILLS = [i for i in idmaps.COCO_PANOPTIC_IDS if i not in _COCO_THINGS and i in _COCO_STUFF_SET]
_ADE_STUFF = [i for i in range(150) if i not in idmaps.ADE_PANOPTIC_THINGS]

# family: (members, fills, shapes, unlabeled patch)
FAMILIES = {
    "voc": (("voc20", "voc21"), [0], list(range(1, 21)), True),
    "pcontext": (("pc59", "pc60"), [0], list(range(1, 60)), False),
    "pc459": (("pc459",), list(range(0, 459, 2)), list(range(1, 459, 2)), True),
    "ade": (("ade150", "ade-panoptic"), _ADE_STUFF, list(idmaps.ADE_PANOPTIC_THINGS), True),
    "ade847": (("ade847",), list(range(0, 847, 2)), list(range(1, 847, 2)), True),
    "coco": (("coco-stuff", "coco-object", "coco-panoptic"), _COCO_STUFF_FILLS, _COCO_THINGS, True),
    "cityscapes": (("cityscapes",), list(range(11)), list(range(11, 19)), True),
}
FAMILY_OF = {m: f for f, (ms, *_rest) in FAMILIES.items() for m in ms}


def family_classes(family: str, num_fill: int = 2, num_shape: int = 4) -> tuple[list[int], list[int]]:
    """The default (fill classes, shape classes) of a family, in its canonical ids."""
    _, fills, shapes, _ = FAMILIES[family]
    return _spread(fills, num_fill), _spread(shapes, num_shape)


def scenes(family: str, num_images: int, size: tuple[int, int], seed: int,
           classes: tuple[Sequence[int], Sequence[int]] | None = None) -> list[Scene]:
    fills, shapes = classes or family_classes(family)
    unl = FAMILIES[family][3]
    rng = np.random.default_rng(seed)
    return [make_scene(rng, size[0], size[1], int(rng.choice(fills)), shapes, unlabeled=unl)
            for _ in range(num_images)]


def encode(name: str, labels: np.ndarray) -> np.ndarray:
    """Canonical family ids -> the label ids benchmark ``name``'s reader returns."""
    ign = BENCHMARKS[name].ignore_index
    out = np.full(labels.shape, ign, dtype=np.int64)
    valid = labels != UNLABELED
    if name in ("voc20", "pc59"):
        keep = valid & (labels > 0)
        out[keep] = labels[keep] - 1
        return out
    if name == "pc60":
        return np.where(valid, labels, 0)
    if name == "coco-stuff":
        lut = {c: i for i, c in enumerate(idmaps.COCO_STUFF_IDS)}
    elif name == "coco-object":
        lut = {c: (_COCO_THINGS.index(c) + 1 if c in _COCO_THINGS else 0) for c in idmaps.COCO_PANOPTIC_IDS}
    elif name == "coco-panoptic":
        lut = {c: i for i, c in enumerate(idmaps.COCO_PANOPTIC_IDS)}
    else:
        out[valid] = labels[valid]
        return out
    for c in np.unique(labels[valid]):
        out[labels == c] = lut[int(c)]
    return out


# --- file writers ------------------------------------------------------------------------------------
def save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


def save_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """uint8 PNG (optionally palette mode, as VOC) or uint16 TIFF by extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        Image.fromarray(label.astype(np.uint16)).save(path)
        return
    if label.min() < 0 or label.max() > 255:
        raise ValueError(f"{path}: label values {label.min()}..{label.max()} do not fit uint8")
    im = Image.fromarray(label.astype(np.uint8))
    if palette:
        im = im.convert("P")
        im.putpalette([v for c in range(256) for v in class_color(c)])
    im.save(path)


def id_to_rgb(pan: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] -> panoptic PNG colours [H, W, 3] (id = R + 256 G + 256² B)."""
    return np.stack([pan % 256, pan // 256 % 256, pan // 65536 % 256], -1).astype(np.uint8)


def panoptic_segments(scene: Scene, rng: np.random.Generator, thing_ids: Sequence[int], crowd: bool):
    """Segment map [H, W] int64 (0 = void) and segments_info (canonical category ids): one
    segment per stuff class present, one per visible thing shape; random ids < 2**24 so all
    three PNG channels are used. ``crowd`` marks the first thing segment iscrowd=1."""
    things = set(thing_ids)
    masks = [(int(c), scene.labels == c) for c in np.unique(scene.labels)
             if c != UNLABELED and int(c) not in things]
    masks += [(i["class_id"], i["mask"]) for i in scene.instances if i["class_id"] in things]
    ids = rng.choice(np.arange(1, 2**24), size=len(masks), replace=False)
    pan = np.zeros(scene.labels.shape, dtype=np.int64)
    infos = []
    for sid, (c, m) in zip(ids.tolist(), masks):
        pan[m] = sid
        ys, xs = np.nonzero(m)
        infos.append({"id": sid, "category_id": c, "iscrowd": 0, "area": int(m.sum()),
                      "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                               int(ys.max() - ys.min() + 1)]})
    if crowd:
        for info in infos:
            if info["category_id"] in things:
                info["iscrowd"] = 1
                break
    return pan, infos


# --- benchmark layouts -------------------------------------------------------------------------------
def _ade_dir(split: str) -> str:
    return {"train": "training", "val": "validation"}[split]


def _stems(family: str, split: str, n: int, seed: int) -> list[str]:
    base = 1 + 1000 * seed + (0 if split == "val" else 500)
    if family == "voc" or family.startswith("pc"):
        return [f"{2008 if split == 'val' else 2007}_{base + i:06d}" for i in range(n)]
    if family.startswith("ade"):
        return [f"ADE_{split}_{base + i:08d}" for i in range(n)]
    if family == "coco":
        return [f"{base + i:012d}" for i in range(n)]
    return [f"{('aachen', 'bochum')[i % 2]}_{base + i:06d}_000019" for i in range(n)]


def _panoptic_json(name: str, records: list, cat_ids: Sequence[int], thing_ids: Sequence[int]) -> dict:
    from ..vocab import Vocabulary
    names = Vocabulary.from_dataset(name).names
    cats = [{"id": int(c), "name": n, "isthing": int(c in set(thing_ids)), "color": list(class_color(int(c)))}
            for c, n in zip(cat_ids, names)]
    return {"images": [r["image"] for r in records], "annotations": [r["ann"] for r in records],
            "categories": cats}


def write_benchmark(name: str, root: str | Path, split: str = "val", num_images: int = 4,
                    size: tuple[int, int] = (48, 64), seed: int = 0,
                    classes: tuple[Sequence[int], Sequence[int]] | None = None) -> list[dict]:
    """Write a tiny split of benchmark ``name`` (and the benchmarks sharing its files) under
    ``root`` in the layout ``get_dataset`` reads. ``classes``: (fill classes, shape classes)
    in the family's canonical ids (voc: voc21 ids, pcontext: pc60 ids, coco: COCO category
    ids, others: the benchmark's ids); default ``family_classes``.

    Returns one dict per image, in the reader's order: ``image_id``, ``image`` (uint8
    [H, W, 3] before JPEG), ``labels`` (canonical ids, -1 unlabeled; the colour of a
    pixel is ``class_color(label)``), ``sem_seg`` (int64 [H, W], what the reader must
    return for ``name``), and for panoptic benchmarks ``pan_seg`` and ``segments_info``.
    """
    family = FAMILY_OF[name]
    root = Path(root)
    sc = scenes(family, num_images, size, seed, classes)
    stems = _stems(family, split, num_images, seed)
    rng = np.random.default_rng(seed + 7)
    truth, records = [], []
    for i, (stem, s) in enumerate(zip(stems, sc)):
        t = {"image_id": stem, "image": s.image, "sem_seg": encode(name, s.labels), "labels": s.labels}
        if family == "voc":
            save_image(root / "VOC2012/JPEGImages" / f"{stem}.jpg", s.image)
            save_label(root / "VOC2012/SegmentationClass" / f"{stem}.png", encode("voc21", s.labels), palette=True)
            save_label(root / f"VOC2012/annotations_detectron2/{split}/{stem}.png", encode("voc20", s.labels))
        elif family in ("pcontext", "pc459"):
            d = "pcontext" if family == "pcontext" else "pcontext_full"
            save_image(root / f"{d}/{split}/image/{stem}.jpg", s.image)
            ext = ".png" if family == "pcontext" else ".tif"
            save_label(root / f"{d}/{split}/label/{stem}{ext}", encode("pc59" if ext == ".png" else "pc459", s.labels))
        elif family == "ade847":
            save_image(root / f"ADE20K_2021_17_01/images_detectron2/{_ade_dir(split)}/{stem}.jpg", s.image)
            save_label(root / f"ADE20K_2021_17_01/annotations_detectron2/{_ade_dir(split)}/{stem}.tif",
                       encode("ade847", s.labels))
        elif family == "cityscapes":
            city = stem.split("_")[0]
            save_image(root / f"cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", s.image)
            save_label(root / f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png",
                       encode("cityscapes", s.labels))
        elif family == "ade":
            save_image(root / f"ADEChallengeData2016/images/{_ade_dir(split)}/{stem}.jpg", s.image)
            save_label(root / f"ADEChallengeData2016/annotations_detectron2/{_ade_dir(split)}/{stem}.png",
                       encode("ade150", s.labels))
            pan, infos = panoptic_segments(s, rng, idmaps.ADE_PANOPTIC_THINGS, crowd=False)
            save_image(root / f"ADEChallengeData2016/ade20k_panoptic_{split}/{stem}.png", id_to_rgb(pan))
            records.append(_record(stem, stem, s, infos))
            if name == "ade-panoptic":
                t.update(pan_seg=pan, segments_info=_contiguous(infos, range(150), idmaps.ADE_PANOPTIC_THINGS))
        elif family == "coco":
            image_id = int(stem)
            save_image(root / f"coco/{split}2017/{stem}.jpg", s.image)
            save_label(root / f"coco/stuffthingmaps_detectron2/{split}2017/{stem}.png", encode("coco-stuff", s.labels))
            save_label(root / f"coco/object_detectron2/{split}2017/{stem}.png", encode("coco-object", s.labels))
            pan, infos = panoptic_segments(s, rng, _COCO_THINGS, crowd=i % 2 == 1)
            save_image(root / f"coco/panoptic_{split}2017/{stem}.png", id_to_rgb(pan))
            records.append(_record(image_id, stem, s, infos))
            if name == "coco-panoptic":
                t.update(image_id=image_id, pan_seg=pan,
                         segments_info=_contiguous(infos, idmaps.COCO_PANOPTIC_IDS, _COCO_THINGS))
        truth.append(t)
    if family == "voc":
        lst = root / f"VOC2012/ImageSets/Segmentation/{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(f"{x}\n" for x in stems))
    if family == "ade":
        js = _panoptic_json("ade-panoptic", records, range(150), idmaps.ADE_PANOPTIC_THINGS)
        (root / f"ADEChallengeData2016/ade20k_panoptic_{split}.json").write_text(json.dumps(js))
    if family == "coco":
        js = _panoptic_json("coco-panoptic", records, idmaps.COCO_PANOPTIC_IDS, _COCO_THINGS)
        (root / "coco/annotations").mkdir(parents=True, exist_ok=True)
        (root / f"coco/annotations/panoptic_{split}2017.json").write_text(json.dumps(js))
    if family == "cityscapes":  # the reader lists cities in sorted order
        truth.sort(key=lambda t: (t["image_id"].split("_")[0], t["image_id"]))
    return truth


def _record(image_id, stem: str, s: Scene, infos: list) -> dict:
    h, w = s.labels.shape
    return {"image": {"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w},
            "ann": {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos}}


def _contiguous(infos: list, cat_ids: Sequence[int], thing_ids: Sequence[int]) -> list:
    lut = {int(c): i for i, c in enumerate(cat_ids)}
    things = set(thing_ids)
    return [{"id": x["id"], "category_id": lut[x["category_id"]], "isthing": x["category_id"] in things,
             "iscrowd": x["iscrowd"], "area": x["area"]} for x in infos]
