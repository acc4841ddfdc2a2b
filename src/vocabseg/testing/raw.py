"""Tiny "official download" layouts for testing each ``vocabseg prepare`` converter.

``write_raw(kind, src)`` writes what the user would have extracted for ``kind`` (a
converter name of ``prepare.converters()``) and returns one dict per image with
``split``, ``stem`` and ``raw`` (int64 [H, W]: the raw label values as the download
stores them, before any mapping), so a test can apply its own mapping. Scenes come from
``synthetic.make_scene`` (class colour = class id), deterministic by seed.

Raw id spaces: voc = SegmentationClass values (255 border); pcontext = 459-class
category ids (0 = no annotation); ade20k = 0..150; ade20k-full = R // 10 * 256 + G;
cityscapes = labelIds; coco = COCO category ids (plus ``stuffmap``, the
stuffthingmaps values, and ``pan`` / ``segments`` for panoptic).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import idmaps
from .synthetic import UNLABELED, id_to_rgb, make_scene, panoptic_segments, save_image, save_label

# canonical (fill, shape) classes per kind, in the download's raw id space
_PC_OTHER = [i for i in (3, 7, 300) if i not in idmaps.PCONTEXT59_IDS]  # 459-only classes
_ADE_FULL_UNUSED = next(i for i in range(1, 4000) if i not in idmaps.ADE847_IDS)
KIND_CLASSES = {
    "voc": ([0], [1, 8, 15, 20]),
    "pcontext": ([idmaps.PCONTEXT59_IDS[40], idmaps.PCONTEXT59_IDS[0]], [idmaps.PCONTEXT59_IDS[58], 2] + _PC_OTHER),
    "ade20k": ([1, 3], [13, 150, 20]),
    "ade20k-full": ([idmaps.ADE847_IDS[0], idmaps.ADE847_IDS[2]],
                    [idmaps.ADE847_IDS[846], idmaps.ADE847_IDS[11], _ADE_FULL_UNUSED]),
    "cityscapes": ([7, 11], [26, 24, 33, 4]),  # 4 (static) has no train id
    "coco": ([92, 95, 100], [1, 2, 90, 67]),
}
KIND_CLASSES["pcontext-full"] = KIND_CLASSES["pcontext"]
for _k in ("coco-stuff", "coco-object", "coco-panoptic"):
    KIND_CLASSES[_k] = KIND_CLASSES["coco"]


def _scenes(kind, n, size, seed, big=None):
    fills, shapes = KIND_CLASSES[kind]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = big if (big and i == 0) else size
        out.append(make_scene(rng, h, w, int(rng.choice(fills)), shapes))
    return out, rng


def write_raw(kind: str, src: str | Path, num_images: int = 2, size: tuple[int, int] = (40, 56), seed: int = 0,
              splits: tuple[str, ...] = ("val",), big: tuple[int, int] | None = None) -> list[dict]:
    """Write the raw download of ``kind`` under ``src`` (``num_images`` per split; with
    ``big`` the first image of each split has that size)."""
    src = Path(src)
    out = []
    for k, split in enumerate(splits):
        scenes, rng = _scenes(kind, num_images, size, seed + 100 * k, big)
        out += _WRITERS[kind.split("-")[0] if kind.startswith("coco") else kind](src, split, scenes, rng, seed)
    return out


def _voc(src, split, scenes, rng, seed):
    root, recs = src / "VOC2012", []
    for i, s in enumerate(scenes):
        stem = f"{2007 + (split == 'val')}_{seed * 1000 + i:06d}"
        raw = np.where(s.labels == UNLABELED, 255, s.labels)
        save_image(root / f"JPEGImages/{stem}.jpg", s.image)
        save_label(root / f"SegmentationClass/{stem}.png", raw, palette=True)
        recs.append({"split": split, "stem": stem, "raw": raw})
    lst = root / f"ImageSets/Segmentation/{split}.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(r["stem"] + "\n" for r in recs))
    return recs


def _pcontext(src, split, scenes, rng, seed):
    """VOC2010 with trainval_merged.json (compressed-RLE segments) and trainval/*.mat."""
    from pycocotools import mask as mask_utils
    from scipy.io import savemat
    root, recs = src / "VOC2010", []
    js = root / "trainval_merged.json"
    data = json.loads(js.read_text()) if js.exists() else {
        "images": [], "annos_segmentation": [],
        "categories": [{"category_id": c, "name": f"class{c}"} for c in range(1, 460)]}
    for i, s in enumerate(scenes):
        stem = f"{2008 + (split == 'val')}_{seed * 1000 + i:06d}"
        image_id = int(stem.replace("_", ""))
        raw = np.where(s.labels == UNLABELED, 0, s.labels)
        save_image(root / f"JPEGImages/{stem}.jpg", s.image)
        h, w = raw.shape
        data["images"].append({"image_id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w,
                               "phase": split})
        for c in np.unique(raw[raw > 0]):
            rle = mask_utils.encode(np.asfortranarray((raw == c).astype(np.uint8)))
            data["annos_segmentation"].append({
                "id": len(data["annos_segmentation"]) + 1, "image_id": image_id, "category_id": int(c),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}, "iscrowd": 0})
        (root / "trainval").mkdir(parents=True, exist_ok=True)
        savemat(str(root / f"trainval/{stem}.mat"), {"LabelMap": raw.astype(np.uint16)})
        recs.append({"split": split, "stem": stem, "raw": raw})
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(data))
    return recs


def _ade20k(src, split, scenes, rng, seed):
    root, d, recs = src / "ADEChallengeData2016", {"train": "training", "val": "validation"}[split], []
    for i, s in enumerate(scenes):
        stem = f"ADE_{split}_{seed * 1000 + i + 1:08d}"
        raw = np.where(s.labels == UNLABELED, 0, s.labels)
        save_image(root / f"images/{d}/{stem}.jpg", s.image)
        save_label(root / f"annotations/{d}/{stem}.png", raw)
        recs.append({"split": d, "stem": stem, "raw": raw})
    return recs


def _ade20k_full(src, split, scenes, rng, seed):
    """images/ADE/<split>/<scene>/ADE_*.jpg with *_seg.png: R = cls // 256 * 10 + r (r < 10), G = cls % 256."""
    root, d, recs = src / "ADE20K_2021_17_01", {"train": "training", "val": "validation"}[split], []
    for i, s in enumerate(scenes):
        stem = f"ADE_{split}_{seed * 1000 + i + 1:08d}"
        folder = root / f"images/ADE/{d}/{('home', 'urban')[i % 2]}/{('bedroom', 'street')[i % 2]}"
        raw = np.where(s.labels == UNLABELED, 0, s.labels)
        seg = np.stack([raw // 256 * 10 + rng.integers(0, 10, raw.shape), raw % 256,
                        rng.integers(0, 256, raw.shape)], -1).astype(np.uint8)
        save_image(folder / f"{stem}.jpg", s.image)
        save_image(folder / f"{stem}_seg.png", seg)
        save_image(folder / f"{stem}_parts_1.png", np.zeros_like(seg))  # present in the download, unused
        recs.append({"split": d, "stem": stem, "raw": raw})
    return recs


def _cityscapes(src, split, scenes, rng, seed):
    root, recs = src / "cityscapes", []
    for i, s in enumerate(scenes):
        city = ("aachen", "bremen")[i % 2]
        stem = f"{city}_{seed * 1000 + i:06d}_000019"
        raw = np.where(s.labels == UNLABELED, 0, s.labels)
        save_image(root / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", s.image)
        save_label(root / f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", raw)
        save_label(root / f"gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png", raw)  # unused by prepare
        recs.append({"split": split, "stem": stem, "city": city, "raw": raw})
    return recs


def _coco(src, split, scenes, rng, seed):
    """val2017/*.jpg, stuffthingmaps/<split>2017/*.png, annotations/instances_*.json (compressed
    RLE; crowd as uncompressed RLE) and annotations/panoptic_*.{json,zip}."""
    from pycocotools import mask as mask_utils
    root, recs = src / "coco", []
    things = list(idmaps.COCO_PANOPTIC_THING_IDS)
    inst = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in things]}
    pan_js = {"images": [], "annotations": [], "categories": [
        {"id": c, "name": f"c{c}", "isthing": int(c in things)} for c in idmaps.COCO_PANOPTIC_IDS]}
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for i, s in enumerate(scenes):
            image_id = seed * 1000 + i + 1 + (500 if split == "train" else 0)
            stem = f"{image_id:012d}"
            h, w = s.labels.shape
            save_image(root / f"{split}2017/{stem}.jpg", s.image)
            stuffmap = np.where(s.labels == UNLABELED, 255, s.labels - 1)
            stuffmap[:2, :2] = 11  # category id 12 is not used by COCO-Stuff
            stuffmap[-2:, -2:] = 181  # category id 182 (wood), the last COCO-Stuff class
            save_label(root / f"stuffthingmaps/{split}2017/{stem}.png", stuffmap)
            info = {"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w}
            inst["images"].append(info)
            pan_js["images"].append(info)
            objects = np.zeros((h, w), dtype=np.int64)
            for k, it in enumerate(s.instances):
                if it["class_id"] not in things:
                    continue
                m = np.asfortranarray(it["mask"].astype(np.uint8))
                crowd = int(k == 0 and i % 2 == 1)
                rle = mask_utils.encode(m)
                seg = ({"size": [h, w], "counts": _uncompressed(it["mask"])} if crowd
                       else {"size": [h, w], "counts": rle["counts"].decode()})
                inst["annotations"].append({"id": len(inst["annotations"]) + 1, "image_id": image_id,
                                            "category_id": it["class_id"], "segmentation": seg,
                                            "area": float(mask_utils.area(rle)), "iscrowd": crowd,
                                            "bbox": [float(x) for x in mask_utils.toBbox(rle)]})
                objects[it["mask"]] = it["class_id"]
            pan, segments = panoptic_segments(s, rng, things, crowd=i % 2 == 1)
            buf = io.BytesIO()
            Image.fromarray(id_to_rgb(pan)).save(buf, format="PNG")
            z.writestr(f"panoptic_{split}2017/{stem}.png", buf.getvalue())
            pan_js["annotations"].append({"image_id": image_id, "file_name": f"{stem}.png",
                                          "segments_info": segments})
            recs.append({"split": split, "stem": stem, "raw": s.labels, "stuffmap": stuffmap,
                         "objects": objects, "pan": pan, "segments": segments})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"annotations/instances_{split}2017.json").write_text(json.dumps(inst))
    (root / f"annotations/panoptic_{split}2017.json").write_text(json.dumps(pan_js))
    (root / f"annotations/panoptic_{split}2017.zip").write_bytes(zbuf.getvalue())
    return recs


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


_WRITERS = {"voc": _voc, "pcontext": _pcontext, "pcontext-full": _pcontext, "ade20k": _ade20k,
            "ade20k-full": _ade20k_full, "cityscapes": _cityscapes, "coco": _coco}
