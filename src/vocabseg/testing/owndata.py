"""Synthetic "own data" sources written to disk: a ``folder:`` layout and COCO instances /
panoptic JSON files (``vocabseg.data.sources``), from the scenes of ``synthetic.py`` (each
class its own colour and shape). Also a command for the README's worked example:

    python -m vocabseg.testing.owndata shapes/          # images/, labels/, classes.txt, splits/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .synthetic import UNLABELED, id_to_rgb, make_scene, save_image

# two "stuff" fills, then four shapes (rectangle, ellipse, triangle by index % 3)
CLASSES = ("grass, lawn", "sky", "box", "ball", "cone", "brick")
FILLS = 2


def _scenes(n: int, size, seed: int, num_classes: int, fills: int):
    rng = np.random.default_rng(seed)
    shapes = list(range(fills, num_classes))
    return [make_scene(rng, size[0], size[1], int(rng.integers(fills)), shapes) for _ in range(n)]


def write_folder(root, num_images: int = 8, size: tuple[int, int] = (48, 64), seed: int = 0,
                 classes: Sequence[str] = CLASSES, fills: int = FILLS, val: int = 0,
                 label_format: str = "png", ignore: int = 255, background: int | None = None,
                 image_suffix: str = ".png") -> list[dict]:
    """Write ``root/{images,labels,classes.txt}`` (and ``splits/{train,val}.txt`` when ``val``:
    the last ``val`` images are the val split). ``label_format``: "png" (8-bit), "png16" or
    "tif" (16-bit). Returns per image {image_id, image uint8 [H, W, 3], sem_seg int64 [H, W]
    (what the reader must return), split}."""
    root = Path(root)
    lines = ([f"#background {background}"] if background is not None else []) + \
            ([f"#ignore {ignore}"] if ignore != 255 else []) + list(classes)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    truth = []
    for i, s in enumerate(_scenes(num_images, size, seed, len(classes), fills)):
        stem = f"img_{seed:03d}_{i:05d}"
        sem = np.where(s.labels == UNLABELED, ignore, s.labels)
        save_image(root / "images" / f"{stem}{image_suffix}", s.image)
        save_label_file(root / "labels" / (stem + (".tif" if label_format == "tif" else ".png")), sem, label_format)
        truth.append({"image_id": stem, "image": s.image, "sem_seg": sem,
                      "split": "val" if i >= num_images - val else "train"})
    if val:
        (root / "splits").mkdir(exist_ok=True)
        for split in ("train", "val"):
            (root / "splits" / f"{split}.txt").write_text("".join(t["image_id"] + "\n" for t in truth
                                                                  if t["split"] == split))
    return truth


def save_label_file(path: Path, label: np.ndarray, label_format: str = "png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if label_format == "png":
        Image.fromarray(label.astype(np.uint8)).save(path)
    else:                                   # 16-bit PNG or TIFF
        Image.fromarray(label.astype(np.uint16)).save(path)


CATEGORY_IDS = (3, 7, 11, 20, 42, 90)        # deliberately not contiguous


def write_coco(root, kind: str = "instances", num_images: int = 6, size: tuple[int, int] = (48, 64),
               seed: int = 0, classes: Sequence[str] = CLASSES, fills: int = FILLS) -> list[dict]:
    """Write ``root/images/*.png`` and ``root/{kind}.json`` (panoptic: also the PNGs in
    ``root/panoptic/``). Instances: one annotation per visible shape (RLE; the first of every
    third image iscrowd), the fills unannotated (background). Panoptic: a segment per fill and
    per shape, unlabelled pixels void. Returns per image {image_id, image, sem_seg, pan_seg,
    segments_info} as the reader must return them."""
    from pycocotools import mask as mask_utils
    root = Path(root)
    ids = list(CATEGORY_IDS[:len(classes)])
    panoptic = kind == "panoptic"
    cats = [{"id": c, "name": n, "supercategory": "x", **({"isthing": int(i >= fills)} if panoptic else {})}
            for i, (c, n) in enumerate(zip(ids, classes))]
    images, anns, truth = [], [], []
    rng = np.random.default_rng(seed + 5)
    for i, s in enumerate(_scenes(num_images, size, seed, len(classes), fills)):
        image_id = 100 + i
        name = f"{image_id:06d}"
        save_image(root / "images" / f"{name}.png", s.image)
        images.append({"id": image_id, "file_name": f"{name}.png", "height": size[0], "width": size[1]})
        h, w = size
        if panoptic:
            masks = [(int(s.fill), s.labels == s.fill)] + [(x["class_id"], x["mask"]) for x in s.instances]
            masks = [(c, m) for c, m in masks if m.any()]
            seg_ids = rng.choice(np.arange(1, 2 ** 24), size=len(masks), replace=False).tolist()
            pan = np.zeros((h, w), dtype=np.int64)
            sem = np.full((h, w), 255, dtype=np.int64)
            infos, segs = [], []
            for sid, (c, m) in zip(seg_ids, masks):
                pan[m], sem[m] = sid, c
                infos.append({"id": sid, "category_id": ids[c], "iscrowd": 0, "area": int(m.sum()),
                              "bbox": [0, 0, w, h]})
                segs.append({"id": sid, "category_id": c, "isthing": c >= fills, "iscrowd": 0, "area": int(m.sum())})
            (root / "panoptic").mkdir(parents=True, exist_ok=True)
            Image.fromarray(id_to_rgb(pan)).save(root / "panoptic" / f"{name}.png")
            anns.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": infos})
        else:
            sem = np.zeros((h, w), dtype=np.int64)
            pan = np.zeros((h, w), dtype=np.int64)
            segs = []
            order = sorted(s.instances, key=lambda x: -int(x["mask"].sum()))
            for k, x in enumerate(order):
                m = x["mask"]
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                crowd = int(i % 3 == 0 and k == 0)
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": ids[x["class_id"]],
                             "segmentation": rle, "area": int(m.sum()), "iscrowd": crowd, "bbox": [0, 0, w, h]})
                sem[m] = x["class_id"] + 1
                pan[m] = k + 1
                segs.append({"id": k + 1, "category_id": x["class_id"] + 1, "isthing": True, "iscrowd": crowd,
                             "area": int(m.sum())})
        truth.append({"image_id": image_id, "image": s.image, "sem_seg": sem, "pan_seg": pan, "segments_info": segs})
    (root / f"{kind}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return truth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vocabseg.testing.owndata",
                                 description="Write a synthetic folder dataset (images/, labels/, classes.txt, "
                                             "splits/) to try `vocabseg inspect-dataset / train / eval` on.")
    ap.add_argument("out", help="folder to create (must not exist yet)")
    ap.add_argument("--images", type=int, default=120, help="number of images (default 120)")
    ap.add_argument("--val", type=int, default=20, help="how many of them form the val split (default 20)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        ap.error(f"{out} exists; give a new folder")
    write_folder(out, args.images, (args.size, args.size), args.seed, val=args.val)
    print(f"wrote {args.images} images ({args.val} val) of {len(CLASSES)} classes to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
