"""Benchmark registry: where each benchmark lives under the datasets root (the
detectron2 layout SAN / FC-CLIP / CAT-Seg users already have) and what its labels mean.

The datasets root is ``$VOCABSEG_DATASETS``, else ``$DETECTRON2_DATASETS``, else
``./datasets``. ``readers.get_dataset(name, split)`` returns a reader.

Background handling: voc21 / pc60 / coco-object have a ``background`` class
(index 0) that the training-free methods predict by thresholding; voc20 / pc59
map background to the ignore label; the others have no background.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SEMANTIC, PANOPTIC = "semantic", "panoptic"


class DatasetError(UserError, ValueError):
    """A benchmark file that cannot be used (unreadable, of the wrong size, holding labels
    that are not the benchmark's classes); the message names the file."""


class IncompleteDataset(UserError, FileNotFoundError):
    """A benchmark split with files missing; the message names them and the way out."""


class UnknownDataset(UserError, KeyError):
    """A benchmark name that is not in the registry (the message suggests close names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Split:
    """Relative paths of one split.

    Semantic: ``images``/``labels`` folders; a label file ``<stem><label_suffix>``
    pairs with the image ``<stem><image_suffix>`` in the same relative sub-folder
    (``recursive``: labels are searched in sub-folders, as Cityscapes' cities).
    ``list_file``: a text file of stems (one per line) selects and orders the files
    (``list_required=False``: only when it exists). Without a list, the split is every stem
    found among the labels or the images, unless ``shared_images`` (the image folder holds
    other splits too, as VOC's JPEGImages), then among the labels.
    Panoptic: ``images``, ``labels`` (the PNG folder) and ``json``.
    """

    images: str
    labels: str
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    list_file: str | None = None
    recursive: bool = False
    json: str | None = None
    list_required: bool = True
    shared_images: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    num_classes: int
    ignore_index: int
    splits: dict[str, Split]
    prepare: str  # `vocabseg prepare <this> SRC` builds it
    download: str  # what SRC is
    background: int | None = None
    label_map: str | None = None  # "pc60": 255 -> 0 (background), others + 1
    conventions: tuple[str, ...] = ()
    notes: str = ""


def _sem(images, labels, **kw):
    return Split(images, labels, **kw)


_VOC = "VOCtrainval_11-May-2012.tar, extracted: the VOCdevkit/VOC2012 folder"
_PC = "VOC2010 (VOCtrainval_03-May-2010.tar) folder holding JPEGImages/ and trainval_merged.json"
_PCF = "VOC2010 folder holding JPEGImages/, trainval_merged.json and trainval/*.mat (trainval.tar.gz)"
_ADE = "ADEChallengeData2016 folder (ADEChallengeData2016.zip)"
_ADEF = "ADE20K_2021_17_01 folder (images/ADE/{training,validation}/**/ADE_*.jpg + *_seg.png)"
_COCO = "coco folder holding {train,val}2017/ images"

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("voc20", SEMANTIC, 20, 255, {
        s: _sem("VOC2012/JPEGImages", f"VOC2012/annotations_detectron2/{s}", shared_images=True,
                list_file=f"VOC2012/ImageSets/Segmentation/{s}.txt", list_required=False)
        for s in ("train", "val")},
        "voc", _VOC, conventions=("fcclip", "san", "tf", "clearclip", "catseg"),
        notes="background -> 255, class ids - 1"),
    Benchmark("voc21", SEMANTIC, 21, 255, {
        s: _sem("VOC2012/JPEGImages", "VOC2012/SegmentationClass",
                list_file=f"VOC2012/ImageSets/Segmentation/{s}.txt", shared_images=True)
        for s in ("train", "val")},
        "voc", _VOC, background=0, conventions=("fcclip", "tf", "clearclip"), notes="raw SegmentationClass"),
    Benchmark("pc59", SEMANTIC, 59, 255, {
        s: _sem(f"pcontext/{s}/image", f"pcontext/{s}/label") for s in ("train", "val")},
        "pcontext", _PC, conventions=("fcclip", "san", "tf", "clearclip", "catseg")),
    Benchmark("pc60", SEMANTIC, 60, 255, {
        s: _sem(f"pcontext/{s}/image", f"pcontext/{s}/label") for s in ("train", "val")},
        "pcontext", _PC, background=0, label_map="pc60", conventions=("tf", "clearclip"),
        notes="pc59 labels read with background (255) as class 0"),
    Benchmark("pc459", SEMANTIC, 459, 65535, {
        s: _sem(f"pcontext_full/{s}/image", f"pcontext_full/{s}/label", label_suffix=".tif")
        for s in ("train", "val")},
        "pcontext-full", _PCF, conventions=("fcclip", "san", "catseg"), notes="16-bit TIFF labels"),
    Benchmark("ade150", SEMANTIC, 150, 255, {
        s: _sem(f"ADEChallengeData2016/images/{d}", f"ADEChallengeData2016/annotations_detectron2/{d}")
        for s, d in (("train", "training"), ("val", "validation"))},
        "ade20k", _ADE, conventions=("fcclip", "san", "tf", "clearclip", "catseg"), notes="raw - 1, 0 -> 255"),
    Benchmark("ade847", SEMANTIC, 847, 65535, {
        s: _sem(f"ADE20K_2021_17_01/images_detectron2/{d}", f"ADE20K_2021_17_01/annotations_detectron2/{d}",
                label_suffix=".tif") for s, d in (("train", "training"), ("val", "validation"))},
        "ade20k-full", _ADEF, conventions=("fcclip", "san", "catseg"), notes="16-bit TIFF labels"),
    Benchmark("coco-stuff", SEMANTIC, 171, 255, {
        s: _sem(f"coco/{s}2017", f"coco/stuffthingmaps_detectron2/{s}2017") for s in ("train", "val")},
        "coco-stuff", _COCO + " and stuffthingmaps_trainval2017.zip extracted to stuffthingmaps/",
        conventions=("fcclip", "san", "tf", "clearclip", "catseg"), notes="182 -> 171 ids"),
    Benchmark("coco-object", SEMANTIC, 81, 255, {
        s: _sem(f"coco/{s}2017", f"coco/object_detectron2/{s}2017") for s in ("train", "val")},
        "coco-object", _COCO + " and annotations/instances_{train,val}2017.json",
        background=0, conventions=("tf", "clearclip"), notes="80 things from the instances JSON + background 0"),
    Benchmark("cityscapes", SEMANTIC, 19, 255, {
        s: _sem(f"cityscapes/leftImg8bit/{s}", f"cityscapes/gtFine/{s}", image_suffix="_leftImg8bit.png",
                label_suffix="_gtFine_labelTrainIds.png", recursive=True) for s in ("train", "val")},
        "cityscapes", "cityscapes folder holding leftImg8bit/ and gtFine/ (with *_labelIds.png)",
        conventions=("fcclip", "tf", "clearclip")),
    Benchmark("coco-panoptic", PANOPTIC, 133, 255, {
        s: Split(f"coco/{s}2017", f"coco/panoptic_{s}2017", json=f"coco/annotations/panoptic_{s}2017.json")
        for s in ("train", "val")},
        "coco-panoptic", _COCO + " and annotations/panoptic_{train,val}2017.{json,zip}",
        conventions=("fcclip",)),
    Benchmark("ade-panoptic", PANOPTIC, 150, 255, {
        s: Split(f"ADEChallengeData2016/images/{d}", f"ADEChallengeData2016/ade20k_panoptic_{s}",
                 json=f"ADEChallengeData2016/ade20k_panoptic_{s}.json")
        for s, d in (("train", "training"), ("val", "validation"))},
        "", "Mask2Former's datasets/prepare_ade20k_pan_seg.py output (no vocabseg converter yet)",
        conventions=("fcclip",)),
]}


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$VOCABSEG_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("VOCABSEG_DATASETS") or os.environ.get("DETECTRON2_DATASETS")
    return Path(env) if env else Path("datasets")


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(str(name).lower(), list(BENCHMARKS), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UnknownDataset(f"unknown dataset {name!r}; {hint}known: {', '.join(BENCHMARKS)}, or your own "
                             "data as folder:PATH or coco:FILE.json")
    return BENCHMARKS[name]


def missing_message(bench: Benchmark, split: str, root: Path, missing: list[Path]) -> str:
    """The error text for a dataset that is not on disk: what is expected and how to build it."""
    paths = ", ".join(str(p) for p in missing)
    s = bench.splits[split]
    expected = [root / s.images, root / s.labels] + ([root / s.json] if s.json else []) \
        + ([root / s.list_file] if s.list_file and s.list_required else [])
    msg = (f"dataset {bench.name!r} ({split}) not found under {root}: missing {paths}. "
           f"Expected: {', '.join(str(p) for p in expected)}. ")
    if bench.prepare:
        msg += (f"Download the {bench.download} and run `vocabseg prepare {bench.prepare} SRC --root {root}`")
    else:
        msg += f"Build it with {bench.download}"
    return msg + " (datasets root: --root, $VOCABSEG_DATASETS, $DETECTRON2_DATASETS or ./datasets)."



def incomplete_message(bench: Benchmark, split: str, root: Path, missing: list[Path], items: int,
                       complete: int, shown: int = 3) -> str:
    """The error text for a split with files missing: the first ``shown`` of them, how many
    there are, and the way out (``--allow-missing``)."""
    names = ", ".join(_rel(p, root) for p in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    lack = "lacks" if items - complete == 1 else "lack"
    return (f"dataset {bench.name!r} ({split}) under {root} is incomplete: {items - complete} of its {items} "
            f"images {lack} a file ({len(missing)} missing: {names}{more}). Restore them, or pass --allow-missing "
            f"(Python: get_dataset(..., allow_missing=True)) to use the {complete} complete images")


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)
