"""COCO prepare converters (see ``prepare.py`` for the common rules).

- coco-stuff: ``stuffthingmaps/{train,val}2017/*.png`` (official stuffthingmaps_trainval2017.zip:
  value = category id - 1, 255 unlabeled) -> ``stuffthingmaps_detectron2`` with the 171 used
  ids in ascending order (182 -> 171), others 255 (as MaskFormer / SAN ``prepare_coco_stuff``).
- coco-object: ``annotations/instances_{train,val}2017.json`` -> ``object_detectron2``: 0 =
  background, 1..80 = the things in ascending category-id order; instances (crowd
  included) painted largest first so smaller objects stay on top. With
  ``from_stuffthingmaps`` it is made from the stuffthingmaps instead, as the training-free
  papers (GroupViT / TCL / SCLIP / NACLIP ``cvt_coco_object.py``) did: stuff and unlabeled -> 0.
- coco-panoptic: ``annotations/panoptic_{train,val}2017.json`` + the PNGs (the
  ``panoptic_{split}2017.zip`` inside ``annotations/`` or an extracted folder) ->
  ``coco/panoptic_{split}2017/`` and ``coco/annotations/panoptic_{split}2017.json``.
"""
from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_write
from . import idmaps
from .prepare_common import (
    Progress, link_dir, link_file, lookup, pending, read_array, require, save_array, track)

STUFF_LUT = lookup({c - 1: i for i, c in enumerate(idmaps.COCO_STUFF_IDS)}, 256, 255, np.uint8)
OBJECT_MAP = {c: i + 1 for i, c in enumerate(idmaps.COCO_PANOPTIC_THING_IDS)}


def _coco_dir(src: Path) -> Path:
    return src / "coco" if (src / "coco").is_dir() and not (src / "val2017").is_dir() else src


def _link_images(src: Path, out: Path, split: str) -> None:
    if (src / f"{split}2017").is_dir():
        link_dir(src / f"{split}2017", out / f"{split}2017")


def _stuff_maps(src: Path) -> Path:
    maps = next((src / d for d in ("stuffthingmaps", "stuffthingmaps_trainval2017") if (src / d).is_dir()), None)
    if maps is None:
        raise FileNotFoundError(f"no stuffthingmaps/ (or stuffthingmaps_trainval2017/) folder in {src}; "
                                "unzip stuffthingmaps_trainval2017.zip there")
    return maps


def _convert_maps(src: Path, root: Path, lut: np.ndarray, out_dir: str, desc: str) -> dict:
    src, prog, out = _coco_dir(Path(src)), Progress(), root / "coco"
    maps = _stuff_maps(src)
    for split in ("train", "val"):
        _link_images(src, out, split)
        files = sorted((maps / f"{split}2017").glob("*.png"))
        for f, dst in pending(files, f"{desc} {split}", lambda f: out / f"{out_dir}/{split}2017/{f.name}", prog):
            save_array(dst, lut[read_array(f)], prog)
    return prog.result()


def prepare_coco_stuff(src: Path, root: Path) -> dict:
    return _convert_maps(src, root, STUFF_LUT, "stuffthingmaps_detectron2", "coco-stuff")


# GroupViT / TCL / SCLIP's cvt_coco_object.py on stuffthingmaps: things -> 1..80, stuff -> 0, and
# unlabeled (255 -> 256) wraps to 0 in its uint8 array, so unlabeled pixels are background too.
OBJECT_FROM_STUFF_LUT = lookup({c - 1: i + 1 for i, c in enumerate(idmaps.COCO_PANOPTIC_THING_IDS)}, 256, 0, np.uint8)


def prepare_coco_object(src: Path, root: Path, from_stuffthingmaps: bool = False) -> dict:
    """From the instance annotations, or (``from_stuffthingmaps``) from the COCO-Stuff maps as
    the training-free papers' ``cvt_coco_object.py`` does. Both write ``object_detectron2``."""
    if from_stuffthingmaps:
        return _convert_maps(src, root, OBJECT_FROM_STUFF_LUT, "object_detectron2", "coco-object")
    from pycocotools.coco import COCO
    src, prog, out = _coco_dir(Path(src)), Progress(), root / "coco"
    splits = [s for s in ("train", "val") if (src / f"annotations/instances_{s}2017.json").exists()]
    if not splits:
        require(src, "annotations/instances_val2017.json", what="coco-object")
    for split in splits:
        _link_images(src, out, split)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading steps
            coco = COCO(str(src / f"annotations/instances_{split}2017.json"))
        for img_id in track(sorted(coco.getImgIds()), f"coco-object {split}"):
            info = coco.loadImgs(img_id)[0]
            dst = out / f"object_detectron2/{split}2017/{Path(info['file_name']).stem}.png"
            if dst.exists():
                prog.skipped += 1
                continue
            label = np.zeros((info["height"], info["width"]), dtype=np.uint8)
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)), key=lambda a: -a["area"])
            for a in anns:
                if a["category_id"] not in OBJECT_MAP:
                    raise ValueError(f"coco-object: unknown category {a['category_id']} in image {img_id}")
                label[coco.annToMask(a) > 0] = OBJECT_MAP[a["category_id"]]
            save_array(dst, label, prog)
    return prog.result()


def prepare_coco_panoptic(src: Path, root: Path) -> dict:
    src, prog, out = _coco_dir(Path(src)), Progress(), root / "coco"
    splits = [s for s in ("train", "val") if (src / f"annotations/panoptic_{s}2017.json").exists()]
    if not splits:
        require(src, "annotations/panoptic_val2017.json", what="coco-panoptic")
    for split in splits:
        _link_images(src, out, split)
        name = f"panoptic_{split}2017"
        link_file(src / f"annotations/{name}.json", out / f"annotations/{name}.json", prog)
        folder = next((d for d in (src / name, src / "annotations" / name) if d.is_dir()), None)
        if folder is not None:
            link_dir(folder, out / name)
            continue
        zpath = src / f"annotations/{name}.zip"
        if not zpath.exists():
            raise FileNotFoundError(f"coco-panoptic: neither {src / name}/, {src / 'annotations' / name}/ "
                                    f"nor {zpath} exists")
        with zipfile.ZipFile(zpath) as z:
            members = [m for m in z.namelist() if m.endswith(".png")]
            for m, dst in pending(members, f"coco-panoptic {split}", lambda m: out / name / Path(m).name, prog):
                atomic_write(dst, z.read(m))
                prog.written += 1
    return prog.result()
