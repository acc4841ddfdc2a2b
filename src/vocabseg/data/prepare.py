"""Prepare-from-raw converters: official downloads -> the detectron2 layout of
``benchmarks.py`` under the datasets root.

Every converter
- reads SRC only (never deletes or modifies a source file); image folders are
  symlinked (whole folders) or hard-linked / copied (single files) into the root,
- writes each output to a temporary file and renames it, and skips outputs that
  already exist, so an interrupted run resumes where it stopped,
- shows a progress bar and returns ``{"written": n, "skipped": m}``.

Label mappings (checked against MendelXu/SAN ``datasets/prepare_*.py``, bytedance/fc-clip
and facebookresearch/MaskFormer ``datasets/prepare_*.py``):
- voc: SegmentationClass -> voc20 labels: 0 (background) -> 255, k -> k - 1, 255 stays.
- pcontext: trainval_merged.json segments painted in file order (category ids of the
  459-class numbering) -> the 59 classes in ascending-id order, everything else -> 255.
- pcontext-full: trainval/<id>.mat ``LabelMap`` (1..459, 0 unlabeled) - 1 -> 16-bit TIFF, 0 -> 65535.
- ade20k: annotations (0 = other, 1..150) - 1 -> 0..149, 0 -> 255.
- ade20k-full: ``*_seg.png`` class R // 10 * 256 + G -> the 847 classes (others 65535,
  16-bit TIFF); images with a short side above 512 are resized to 512 (bilinear image,
  nearest label) and every image is re-encoded as JPEG, as the reference does.
- cityscapes: ``*_labelIds.png`` -> ``*_labelTrainIds.png`` (19 classes, others 255).
COCO converters are in ``prepare_coco.py``, the helpers both use in ``prepare_common.py``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import idmaps
from .benchmarks import DatasetError, datasets_root
from .prepare_coco import prepare_coco_object, prepare_coco_panoptic, prepare_coco_stuff
from .prepare_common import Progress, link_dir, link_file, lookup, pending, read_array, require, save_array, track


# --- PASCAL VOC ------------------------------------------------------------------------------------
def find_voc2012(src: Path) -> Path:
    for cand in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012"):
        if (cand / "SegmentationClass").is_dir() and (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(f"voc: no VOC2012 folder (with JPEGImages/ and SegmentationClass/) at {src}, "
                            f"{src / 'VOC2012'} or {src / 'VOCdevkit/VOC2012'}")


VOC20_LUT = lookup({0: 255, **{k: k - 1 for k in range(1, 21)}, 255: 255}, 256, 255, np.uint8)


def prepare_voc(src: Path, root: Path) -> dict:
    src = find_voc2012(Path(src))
    require(src, "ImageSets/Segmentation/val.txt", what="voc")
    out, prog = root / "VOC2012", Progress()
    for d in ("JPEGImages", "SegmentationClass", "ImageSets"):
        link_dir(src / d, out / d)
    for split in ("train", "val"):
        lst = src / f"ImageSets/Segmentation/{split}.txt"
        if not lst.exists():
            continue
        stems = [x.strip() for x in lst.read_text().splitlines() if x.strip()]
        for stem, dst in pending(stems, f"voc {split}", lambda t: out / f"annotations_detectron2/{split}/{t}.png",
                                 prog):
            save_array(dst, VOC20_LUT[read_array(src / f"SegmentationClass/{stem}.png")], prog)
    return prog.result()


# --- PASCAL Context --------------------------------------------------------------------------------
def _pcontext_images(src: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    require(src, "JPEGImages", "trainval_merged.json", what="pcontext")
    data = json.loads((src / "trainval_merged.json").read_text())
    annos: dict[int, list[dict]] = {}
    for a in data.get("annos_segmentation", []):
        annos.setdefault(a["image_id"], []).append(a)
    return data["images"], annos


def _decode(seg: dict, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils
    rle = seg
    if isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg.get("counts"), str):
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
    return mask_utils.decode(rle)


PC59_LUT = lookup({c: i for i, c in enumerate(idmaps.PCONTEXT59_IDS)}, 512, 255, np.uint8)


def prepare_pcontext(src: Path, root: Path) -> dict:
    src, prog = Path(src), Progress()
    images, annos = _pcontext_images(src)
    for img in track(images, "pcontext"):
        phase, stem = img["phase"], Path(img["file_name"]).stem
        if phase not in ("train", "val"):
            continue
        link_file(src / "JPEGImages" / img["file_name"], root / f"pcontext/{phase}/image/{img['file_name']}", prog)
        dst = root / f"pcontext/{phase}/label/{stem}.png"
        if dst.exists():
            prog.skipped += 1
            continue
        mask = np.zeros((img["height"], img["width"]), dtype=np.int64)
        for a in annos.get(img["image_id"], []):
            mask[_decode(a["segmentation"], img["height"], img["width"]) > 0] = a["category_id"]
        save_array(dst, PC59_LUT[mask], prog)
    return prog.result()


def prepare_pcontext_full(src: Path, root: Path) -> dict:
    from scipy.io import loadmat
    src, prog = Path(src), Progress()
    images, _ = _pcontext_images(src)
    require(src, "trainval", what="pcontext-full (trainval.tar.gz extracted into SRC)")
    for img in track(images, "pcontext-full"):
        phase, stem = img["phase"], Path(img["file_name"]).stem
        if phase not in ("train", "val"):
            continue
        link_file(src / "JPEGImages" / img["file_name"], root / f"pcontext_full/{phase}/image/{img['file_name']}",
                  prog)
        dst = root / f"pcontext_full/{phase}/label/{stem}.tif"
        if dst.exists():
            prog.skipped += 1
            continue
        lab = loadmat(str(src / "trainval" / f"{stem}.mat"))["LabelMap"].astype(np.int64) - 1
        save_array(dst, np.where(lab < 0, 65535, lab).astype(np.uint16), prog)
    return prog.result()


# --- ADE20K ---------------------------------------------------------------------------------------------
ADE150_LUT = ((np.arange(256) - 1) % 256).astype(np.uint8)  # 0 -> 255, k -> k - 1


def prepare_ade20k(src: Path, root: Path) -> dict:
    src, prog = Path(src), Progress()
    if (src / "ADEChallengeData2016").is_dir():
        src = src / "ADEChallengeData2016"
    require(src, "images", "annotations", what="ade20k")
    out = root / "ADEChallengeData2016"
    link_dir(src / "images", out / "images")
    for d in ("training", "validation"):
        files = sorted((src / "annotations" / d).glob("*.png"))
        for f, dst in pending(files, f"ade20k {d}", lambda f: out / f"annotations_detectron2/{d}/{f.name}", prog):
            save_array(dst, ADE150_LUT[read_array(f)], prog)
    return prog.result()


ADE847_MAP = {c: i for i, c in enumerate(idmaps.ADE847_IDS)}


def ade_full_size(h: int, w: int, max_size: int = 512) -> tuple[int, int] | None:
    """The reference's resize rule: short side above ``max_size`` -> ``max_size``; else None."""
    if w >= h > max_size:
        return max_size, round(w / h * max_size)
    if h >= w > max_size:
        return round(h / w * max_size), max_size
    return None


def prepare_ade20k_full(src: Path, root: Path) -> dict:
    src, prog = Path(src), Progress()
    if (src / "ADE20K_2021_17_01").is_dir():
        src = src / "ADE20K_2021_17_01"
    require(src, "images/ADE", what="ade20k-full")
    files = sorted(p for p in (src / "images/ADE").rglob("ADE_*.jpg"))
    lut = lookup(ADE847_MAP, 256 * 256, 65535, np.uint16)
    out = root / "ADE20K_2021_17_01"
    for f in track(files, "ade20k-full"):
        split = "validation" if f.name.split("_")[1] == "val" else "training"
        img_dst = out / f"images_detectron2/{split}/{f.name}"
        lab_dst = out / f"annotations_detectron2/{split}/{f.stem}.tif"
        if img_dst.exists() and lab_dst.exists():
            prog.skipped += 2
            continue
        img = read_array(f)
        seg = read_array(f.with_name(f.stem + "_seg.png")).astype(np.int64)
        lab = seg[..., 0] // 10 * 256 + seg[..., 1]
        size = ade_full_size(*img.shape[:2])
        if size is not None:
            img, lab = resize_bilinear_uint8(img, size), resize_nearest(lab, size)
        save_array(img_dst, img, prog)
        save_array(lab_dst, lut[lab], prog)
    return prog.result()


def resize_bilinear_uint8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV INTER_LINEAR-style resize (no antialiasing, half-pixel centres) of uint8 [H, W(, C)]."""
    x = torch.from_numpy(img.astype(np.float32))
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    y = y[0] if img.ndim == 2 else y.permute(1, 2, 0)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def resize_nearest(lab: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV INTER_NEAREST-style resize (source index floor(dst * in / out)) of [H, W]."""
    h, w = lab.shape
    ys = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    xs = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return lab[ys[:, None], xs[None, :]]


# --- Cityscapes ---------------------------------------------------------------------------------------
CITY_LUT = lookup(idmaps.CITYSCAPES_LABEL_TO_TRAIN, 256, 255, np.uint8)


def prepare_cityscapes(src: Path, root: Path) -> dict:
    src, prog = Path(src), Progress()
    require(src, "leftImg8bit", "gtFine", what="cityscapes")
    out = root / "cityscapes"
    link_dir(src / "leftImg8bit", out / "leftImg8bit")
    for split in ("train", "val"):
        files = sorted((src / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
        def dst_of(f):
            rel = f.relative_to(src / "gtFine")
            return out / "gtFine" / rel.parent / f.name.replace("_labelIds.png", "_labelTrainIds.png")
        for f, dst in pending(files, f"cityscapes {split}", dst_of, prog):
            save_array(dst, CITY_LUT[read_array(f)], prog)
    return prog.result()


def converters() -> dict[str, Callable[[Path, Path], dict]]:
    return {"voc": prepare_voc, "pcontext": prepare_pcontext, "pcontext-full": prepare_pcontext_full,
            "ade20k": prepare_ade20k, "ade20k-full": prepare_ade20k_full, "coco-stuff": prepare_coco_stuff,
            "coco-object": prepare_coco_object, "cityscapes": prepare_cityscapes,
            "coco-panoptic": prepare_coco_panoptic}


def prepare(kind: str, src: str | os.PathLike, root: str | os.PathLike | None = None, **options) -> dict:
    """Run converter ``kind`` (see ``converters()``) from ``src`` into the datasets root;
    ``options`` go to the converter (``from_stuffthingmaps`` for coco-object)."""
    table = converters()
    if kind not in table:
        raise KeyError(f"unknown dataset kind {kind!r}; known: {', '.join(table)}")
    src, root = Path(src), datasets_root(root)
    if not src.is_dir():
        raise FileNotFoundError(f"SRC {src} is not a folder")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"the datasets root {root} is a file, not a folder")
    return table[kind](src, root, **options)
