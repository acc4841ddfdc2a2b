"""Your own data, accepted wherever a benchmark name is (``get_dataset``, ``vocabseg eval
--dataset``, ``data.train`` / ``eval.datasets`` in training configs):

``folder:PATH`` — a folder holding
    images/       RGB images (jpg, png, ...), any sub-folders
    labels/       class-index maps matched to images by relative path without extension:
                  8-bit PNG, 16-bit PNG or TIFF; value i = line i of classes.txt, the ignore
                  value (default 255; 65535 with more than 255 classes) = not labelled; items
                  carry 255 for it (the file's value with more than 255 classes)
    classes.txt   one class per line, synonyms comma-separated; optional lines
                  ``#background N`` (class N means "no class") and ``#ignore N``
    splits/       optional train.txt / val.txt (one relative path without extension a line);
                  without them every split is the whole folder
``coco:FILE.json[:IMAGES[:PNGS]]`` — a COCO instances or panoptic JSON. Images are in
    ``IMAGES``, by default the first of ``images/``, ``<split>/`` (instances_val2017.json ->
    val2017/) next to the JSON or its parent folder; panoptic PNGs in ``PNGS``, by default the
    folder named as the JSON next to it. Instances: class 0 is ``background`` (unannotated
    pixels), categories follow in ascending id order; objects are painted largest first
    (crowd included) and each is also a segment (``pan_seg`` / ``segments_info``, crowd flagged)
    for FC-CLIP. Panoptic: as the ``coco-panoptic`` reader. A JSON file is one split.

Opening a source checks it: pairs, readability, sizes and label values; what is wrong comes
as one ``SourceProblems`` line with a count and the first few examples of each problem.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..vocab import Vocabulary
from .benchmarks import SEMANTIC, PANOPTIC, DatasetError
from .decode import read_image, read_label, rgb_to_id

KINDS = ("folder", "coco")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
SHOWN = 3            # examples per problem in the one-line report
_ROTATED = (5, 6, 7, 8)   # EXIF orientations that swap width and height


class SourceProblems(DatasetError):
    """A dataset source that fails its checks; the message lists each problem in one line."""


def is_source(name) -> bool:
    """True for ``folder:...`` / ``coco:...`` strings."""
    return isinstance(name, str) and name.split(":", 1)[0] in KINDS and ":" in name


def open_source(spec: str, split: str = "val", allow_missing: bool = False, check: bool = True,
                strict: bool = True):
    """The reader of a ``folder:`` or ``coco:`` source (see the module docstring). ``strict``
    False: problems are kept in ``problems`` (one line, or "") instead of raised, and images
    without a label are left out (``vocabseg inspect-dataset``)."""
    kind, _, rest = spec.partition(":")
    if not rest:
        raise DatasetError(f"{spec!r}: give a path after {kind}:, e.g. {kind}:" +
                           ("data/mine" if kind == "folder" else "annotations/instances_val.json"))
    if kind == "folder":
        return FolderDataset(rest, split, allow_missing or not strict, check, strict)
    return CocoDataset(*_coco_parts(rest), split=split, check=check, strict=strict)


def _coco_parts(rest: str) -> tuple[str, str | None, str | None]:
    """``FILE.json[:IMAGES[:PNGS]]`` -> (json, images or None, pngs or None)."""
    low = rest.lower()
    cut = low.find(".json:")
    if cut < 0:
        return rest, None, None
    js, more = rest[:cut + 5], rest[cut + 6:].split(":", 1)
    return js, more[0] or None, (more[1] if len(more) > 1 and more[1] else None)


class Problems:
    """Problems found while checking, gathered into one line."""

    def __init__(self, spec: str):
        self.spec, self.kinds = spec, {}

    def add(self, what: str, example: str) -> None:
        self.kinds.setdefault(what, []).append(example)

    def raise_if_any(self, hint: str = "", strict: bool = True) -> str:
        """Raise the one line (``strict``) or return it ("" when all is well)."""
        if not self.kinds:
            return ""
        total = sum(len(v) for v in self.kinds.values())
        parts = []
        for what, ex in self.kinds.items():
            more = f" and {len(ex) - SHOWN} more" if len(ex) > SHOWN else ""
            parts.append(f"{len(ex)} {what} ({', '.join(ex[:SHOWN])}{more})")
        line = f"{self.spec}: {total} problem{'s' if total > 1 else ''}: " + "; ".join(parts) + \
            (f". {hint}" if hint else "")
        if strict:
            raise SourceProblems(line)
        return line


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    """{relative path without extension: [files]} of the files under ``folder`` with those suffixes."""
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in suffixes:
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), []).append(p)
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as ``read_image`` returns it (EXIF rotation applied), from its header."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            turned = im.getexif().get(0x0112) in _ROTATED
        except Exception:      # a malformed EXIF block: read_image will not rotate either
            turned = False
    return (w, h) if turned else (h, w)


def read_classes(path: Path) -> tuple[Vocabulary, int | None]:
    """classes.txt -> (vocabulary with its background, ignore value or None)."""
    from ..errors import VocabularyError
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the class list ({e})") from None
    background = ignore = None
    for line in text.splitlines():
        words = line.strip().split()
        for key in ("#background", "#ignore"):
            if words and words[0] == key:
                if len(words) != 2 or not words[1].isdigit():
                    raise DatasetError(f"{path}: expected '{key} N' with N a number, got {line.strip()!r}")
                if key == "#background":
                    background = int(words[1])
                else:
                    ignore = int(words[1])
    try:
        vocab = Vocabulary.from_lines(text.splitlines())
    except VocabularyError as e:
        raise DatasetError(f"{path}: {e}") from None
    if background is not None and background >= len(vocab):
        raise DatasetError(f"{path}: #background {background} but only {len(vocab)} classes")
    return Vocabulary(vocab.classes, background), ignore


class _Source:
    """What the engine needs of a reader, for own-data sources."""
    conventions: tuple = ()
    thing_ids = None
    skipped = 0
    has_labels = True
    problems = ""
    split_file = None      # the file naming this split's images (folder splits/), else every image is in it

    def vocabulary_for(self, convention: str | None = None) -> Vocabulary:
        return self.vocabulary

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self):
        return f"{type(self).__name__}({self.spec!r}, split={self.split!r}, {len(self)} images)"


class FolderDataset(_Source):
    """``folder:PATH`` (see the module docstring); items as the benchmark readers'. A folder
    without ``labels/`` opens (``has_labels`` False; items have no ``sem_seg``) for inspection
    and segmentation, but not for evaluation or training."""

    task = SEMANTIC

    def __init__(self, path, split: str = "val", allow_missing: bool = False, check: bool = True,
                 strict: bool = True):
        self.root = Path(path)
        self.spec, self.split = f"folder:{path}", split
        self.name = "folder-" + (self.root.resolve().name or "data")
        if not self.root.is_dir():
            raise DatasetError(f"{self.spec}: no such folder")
        img_dir, lab_dir, cls = self.root / "images", self.root / "labels", self.root / "classes.txt"
        missing = [p.name + ("/" if p != cls else "") for p in (img_dir, cls) if not p.exists()]
        if missing:
            raise DatasetError(f"{self.spec}: missing {' and '.join(missing)}; a folder source holds images/, "
                               "labels/ (optional for inspection) and classes.txt")
        self.vocabulary, ignore = read_classes(cls)
        self.num_classes = len(self.vocabulary)
        self.background = self.vocabulary.background
        self.file_ignore = ignore if ignore is not None else (255 if self.num_classes <= 255 else 65535)
        if self.file_ignore < self.num_classes:
            raise DatasetError(f"{cls}: the ignore value {self.file_ignore} is a class index (there are "
                               f"{self.num_classes} classes); write '#ignore N' with N >= {self.num_classes}")
        # items carry 255 for "not labelled" whatever the files use (the training recipes pad with 255),
        # unless 255 is a class
        self.ignore_index = 255 if self.num_classes <= 255 else self.file_ignore
        self.has_labels = lab_dir.is_dir()
        probs = Problems(self.spec)
        images = _files(img_dir, IMAGE_SUFFIXES)
        labels = _files(lab_dir, LABEL_SUFFIXES) if self.has_labels else {}
        for stem, ps in list(images.items()) + list(labels.items()):
            if len(ps) > 1:
                probs.add("files sharing a name", " / ".join(p.relative_to(self.root).as_posix() for p in ps))
        listed = self.root / "splits" / f"{split}.txt"
        self.split_file = listed if listed.is_file() else None
        if self.split_file:
            stems = [s.strip() for s in listed.read_text(encoding="utf-8-sig").splitlines() if s.strip()]
            for s in stems:
                if s not in images:
                    probs.add(f"names in splits/{split}.txt without an image", s)
            stems = [s for s in stems if s in images]
        else:
            stems = sorted(images)
            if (self.root / "splits").is_dir():
                have = ", ".join(sorted(p.stem for p in (self.root / "splits").glob("*.txt"))) or "none"
                raise DatasetError(f"{self.spec}: no splits/{split}.txt (splits: {have})")
        if self.has_labels:
            lacking = [s for s in stems if s not in labels]
            if lacking and (not allow_missing or not strict):
                for s in lacking:
                    probs.add("images without a label", images[s][0].relative_to(self.root).as_posix())
            scope = set(stems)
            if not self.split_file:
                for s in sorted(set(labels) - set(images)):
                    probs.add("labels without an image", labels[s][0].relative_to(self.root).as_posix())
            self.skipped = len(lacking)
            stems = [s for s in stems if s in labels and s in scope]
        if not stems:
            probs.raise_if_any()
            raise DatasetError(f"{self.spec}: no images in images/" + (f" for split {split}" if self.split_file else ""))
        self.files = [(images[s][0], labels[s][0] if self.has_labels else None) for s in stems]
        if check:
            self._check(probs)
        self.problems = probs.raise_if_any(strict=strict)

    def _check(self, probs: Problems) -> None:
        from tqdm.auto import tqdm
        for img, lab in tqdm(self.files, desc=f"check {self.name}", unit="img", leave=False,
                             disable=len(self.files) < 500):
            rel = img.relative_to(self.root).as_posix()
            try:
                size = image_size(img)
            except Exception:
                probs.add("unreadable images", rel)
                continue
            if lab is None:
                continue
            lrel = lab.relative_to(self.root).as_posix()
            try:
                arr = read_label(lab)
            except Exception:
                probs.add("unreadable or multi-channel labels", lrel)
                continue
            if arr.shape != size:
                probs.add("labels of another size than their image",
                          f"{lrel} {arr.shape[0]}x{arr.shape[1]} vs {size[0]}x{size[1]}")
            values = np.unique(arr)
            bad = values[(values >= self.num_classes) & (values != self.file_ignore)]
            if bad.size:
                probs.add(f"labels with a class index not in classes.txt ({self.num_classes} classes, "
                          f"ignore {self.file_ignore})", f"{lrel}: {', '.join(map(str, bad[:4].tolist()))}")

    def label(self, i: int) -> torch.Tensor:
        if not self.has_labels:
            raise DatasetError(f"{self.spec} has no labels/ folder")
        path = self.files[i][1]
        arr = _read(read_label, path, "label").astype(np.int64)
        unlabelled = arr == self.file_ignore
        bad = (arr >= self.num_classes) & ~unlabelled
        if bad.any():
            raise DatasetError(f"{path}: label value {int(arr[bad][0])} is not a class (0..{self.num_classes - 1}) "
                               f"nor the ignore value {self.file_ignore}")
        arr[unlabelled] = self.ignore_index
        return torch.from_numpy(arr)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        img, lab = self.files[i]
        item = {"image": _read(read_image, img, "image"), "file_name": str(img),
                "image_id": img.relative_to(self.root / "images").with_suffix("").as_posix()}
        if lab is not None:
            sem = self.label(i)
            if tuple(sem.shape) != tuple(item["image"].shape[1:]):
                raise DatasetError(f"{lab}: label is {sem.shape[0]}x{sem.shape[1]}, its image "
                                   f"{item['image'].shape[1]}x{item['image'].shape[2]}")
            item.update(sem_seg=sem, sem_seg_file_name=str(lab))
        return item


def _read(reader, path: Path, what: str):
    try:
        return reader(path)
    except DatasetError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: cannot read this {what} ({reason})") from None


def _default_images(js: Path, split: str) -> Path:
    stem = js.stem
    for prefix in ("instances_", "panoptic_"):
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
    for d in (js.parent / "images", js.parent / stem, js.parent.parent / stem, js.parent.parent / "images"):
        if d.is_dir():
            return d
    return js.parent / "images"


class CocoDataset(_Source):
    """``coco:FILE.json[:IMAGES[:PNGS]]`` (see the module docstring)."""

    ignore_index = 255

    def __init__(self, json_file, images=None, pngs=None, split: str = "val", check: bool = True,
                 strict: bool = True):
        js = Path(json_file)
        self.spec, self.split = f"coco:{json_file}", split
        self.name = "coco-" + js.stem
        if not js.is_file():
            raise DatasetError(f"{self.spec}: no such file")
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
            cats = sorted(data["categories"], key=lambda c: c["id"])
            imgs = data["images"]
            anns = data["annotations"]
            names = [str(c["name"]) for c in cats]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{js}: not a COCO instances or panoptic JSON ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
        self.panoptic = bool(anns) and "segments_info" in anns[0]
        self.task = PANOPTIC if self.panoptic else SEMANTIC
        self.image_dir = Path(images) if images else _default_images(js, split)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.spec}: image folder {self.image_dir} not found; give it as "
                               f"coco:{json_file}:IMAGE_DIR")
        shift = 0 if self.panoptic else 1
        self.contiguous = {c["id"]: i + shift for i, c in enumerate(cats)}
        things = [i + shift for i, c in enumerate(cats) if c.get("isthing", 0 if self.panoptic else 1)]
        classes = ([] if self.panoptic else [("background",)]) + [tuple(n.split(",")) if "," in n else (n,)
                                                                   for n in names]
        classes = [tuple(s.strip() for s in c if s.strip()) for c in classes]
        self.vocabulary = Vocabulary(tuple(classes), None if self.panoptic else 0)
        self.num_classes, self.background, self.thing_ids = len(classes), self.vocabulary.background, things
        probs = Problems(self.spec)
        by_image: dict = {}
        known = {im.get("id") for im in imgs}
        if self.panoptic:
            self.png_dir = Path(pngs) if pngs else js.with_suffix("")
            if not self.png_dir.is_dir():
                raise DatasetError(f"{self.spec}: panoptic PNG folder {self.png_dir} not found; give it as "
                                   f"coco:{json_file}:IMAGE_DIR:PNG_DIR")
            for a in anns:
                by_image[a.get("image_id")] = a
                for s in a.get("segments_info", []):
                    if s.get("category_id") not in self.contiguous:
                        probs.add("segments of a category not in the JSON's categories",
                                  f"{a.get('file_name')}: {s.get('category_id')}")
        else:
            for a in anns:
                if a.get("category_id") not in self.contiguous:
                    probs.add("annotations of a category not in the JSON's categories",
                              f"id {a.get('id')}: {a.get('category_id')}")
                by_image.setdefault(a.get("image_id"), []).append(a)
        for k in by_image:
            if k not in known:
                probs.add("annotations of an image not in the JSON's images", str(k))
        self.records = [(im, by_image.get(im["id"], None if self.panoptic else [])) for im in imgs]
        if check:
            self._check(probs)
        self.problems = probs.raise_if_any(strict=strict)
        self.files = self.records
        if not self.files:
            raise DatasetError(f"{self.spec}: the JSON lists no images")

    def _check(self, probs: Problems) -> None:
        from tqdm.auto import tqdm
        for im, ann in tqdm(self.records, desc=f"check {self.name}", unit="img", leave=False,
                            disable=len(self.records) < 500):
            path = self.image_dir / im["file_name"]
            if not path.is_file():
                probs.add("images not found", im["file_name"])
                continue
            try:
                size = image_size(path)
            except Exception:
                probs.add("unreadable images", im["file_name"])
                continue
            if (im.get("height"), im.get("width")) != size:
                probs.add("images of another size than the JSON says",
                          f"{im['file_name']} {size[0]}x{size[1]} vs {im.get('height')}x{im.get('width')}")
            if self.panoptic:
                if ann is None:
                    probs.add("images without a panoptic annotation", im["file_name"])
                    continue
                png = self.png_dir / ann["file_name"]
                if not png.is_file():
                    probs.add("panoptic PNGs not found", ann["file_name"])
                    continue
                try:
                    with Image.open(png) as p:
                        w, h = p.size
                except Exception:
                    probs.add("unreadable panoptic PNGs", ann["file_name"])
                    continue
                if (h, w) != size:
                    probs.add("panoptic PNGs of another size than their image",
                              f"{ann['file_name']} {h}x{w} vs {size[0]}x{size[1]}")

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        im, ann = self.records[i]
        path = self.image_dir / im["file_name"]
        image = _read(read_image, path, "image")
        h, w = image.shape[1:]
        item = {"image": image, "file_name": str(path), "image_id": im["id"]}
        if self.panoptic:
            png = self.png_dir / ann["file_name"]
            pan = _read(lambda p: rgb_to_id(np.asarray(Image.open(p).convert("RGB"))), png, "panoptic PNG")
            if pan.shape != (h, w):
                raise DatasetError(f"{png}: size {pan.shape} != image size {(h, w)}")
            sem = np.full(pan.shape, self.ignore_index, dtype=np.int64)
            segments = []
            for s in ann["segments_info"]:
                c = self.contiguous[s["category_id"]]
                segments.append({"id": int(s["id"]), "category_id": c, "isthing": c in self.thing_ids,
                                 "iscrowd": int(s.get("iscrowd", 0)), "area": int(s.get("area", 0))})
                sem[pan == s["id"]] = c
            item.update(sem_seg=torch.from_numpy(sem), pan_seg=torch.from_numpy(pan), segments_info=segments)
            return item
        from pycocotools import mask as mask_utils
        sem = np.zeros((h, w), dtype=np.int64)
        pan = np.zeros((h, w), dtype=np.int64)
        segments = []
        for k, a in enumerate(sorted(ann, key=lambda a: -a.get("area", 0))):
            m = _ann_mask(mask_utils, a["segmentation"], h, w)
            c = self.contiguous[a["category_id"]]
            sem[m] = c
            pan[m] = k + 1
            segments.append({"id": k + 1, "category_id": c, "isthing": True, "iscrowd": int(a.get("iscrowd", 0)),
                             "area": int(m.sum())})
        segments = [s for s in segments if (pan == s["id"]).any()]
        item.update(sem_seg=torch.from_numpy(sem), pan_seg=torch.from_numpy(pan), segments_info=segments)
        return item


def _ann_mask(mask_utils, seg, h: int, w: int) -> np.ndarray:
    """bool [h, w] of a COCO segmentation (polygons, RLE or uncompressed RLE)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    import warnings
    with warnings.catch_warnings():     # pycocotools' numpy-2 copy-keyword notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)

