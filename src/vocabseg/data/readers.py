"""Dataset readers for the benchmark layouts of ``benchmarks.py``; ``get_dataset(name, split)``
returns the reader of a benchmark.

An item is a dict:
- ``image``: uint8 Tensor[3, H, W], RGB (EXIF orientation applied, as detectron2 / OpenCV do)
- ``sem_seg``: LongTensor[H, W] class ids, ``ignore_index`` where ignored. Panoptic
  items carry it too, painted from their segments (crowd included, as Mask2Former's
  ``prepare_coco_semantic_annos_from_panoptic_annos.py``), 255 elsewhere.
- ``file_name`` (image path), ``image_id`` (file stem, or the panoptic JSON id)
- panoptic only: ``pan_seg`` LongTensor[H, W] segment ids (R + 256 G + 256² B; 0 = void),
  ``segments_info``: list of dict(id, category_id (contiguous 0..C-1), isthing, iscrowd, area)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..vocab import Vocabulary
from .decode import read_image, read_label, rgb_to_id
from .benchmarks import (PANOPTIC, Benchmark, DatasetError, IncompleteDataset, datasets_root, get_benchmark,
                         incomplete_message, missing_message)


class _Base:
    def __init__(self, bench: Benchmark, split: str, root: Path):
        self.bench, self.split, self.root = bench, split, Path(root)
        self.name = bench.name
        self.task = bench.task
        self.num_classes = bench.num_classes
        self.ignore_index = bench.ignore_index
        self.background = bench.background
        self.conventions = bench.conventions
        self.vocabulary = Vocabulary.from_dataset(bench.name)
        if len(self.vocabulary) != self.num_classes:
            raise RuntimeError(f"{bench.name}: vocabulary file has {len(self.vocabulary)} classes, "
                               f"expected {self.num_classes}")
        self.thing_ids: list[int] | None = None

    def vocabulary_for(self, convention: str | None = None) -> Vocabulary:
        """The class names in a published convention ("fcclip", "san", "tf", "clearclip"), or the default."""
        return Vocabulary.from_dataset(self.name, convention)

    def _read(self, reader, path: Path, what: str):
        """``reader(path)``, any failure turned into one line naming the file."""
        try:
            return reader(path)
        except DatasetError:
            raise
        except Exception as e:   # PIL / OS errors of a corrupt, truncated or vanished file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatasetError(f"{path}: cannot read this {self.name} {what} ({reason})") from None

    def _complete(self, pairs: list, allow_missing: bool) -> list[tuple[Path, Path]]:
        """``pairs`` [((image, on disk), (label, on disk))] -> the complete (image, label) pairs.
        Sets ``missing`` (paths not on disk) and ``skipped`` (items left out); a missing file
        is an ``IncompleteDataset`` error unless ``allow_missing`` (and something is left)."""
        files = [(a, b) for (a, ha), (b, hb) in pairs if ha and hb]
        self.missing: list[Path] = [p for pair in pairs for p, have in pair if not have]
        self.skipped = len(pairs) - len(files)
        if self.skipped and not (allow_missing and files):
            raise IncompleteDataset(incomplete_message(self.bench, self.split, self.root, self.missing, len(pairs),
                                                       len(files)))
        return files

    def _require(self, *paths: Path) -> None:
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(missing_message(self.bench, self.split, self.root, missing))

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, {len(self)} images, root={self.root})"


class SemanticDataset(_Base):
    """Image / label-map pairs of a semantic benchmark. A split with a file missing is an
    ``IncompleteDataset`` error naming them, unless ``allow_missing``: then the complete
    pairs are read and ``skipped`` counts the others."""

    def __init__(self, bench: Benchmark, split: str, root: Path, allow_missing: bool = False):
        super().__init__(bench, split, root)
        s = bench.splits[split]
        img_dir, lab_dir = self.root / s.images, self.root / s.labels
        listed = self.root / s.list_file if s.list_file else None
        self._require(img_dir, lab_dir, *([listed] if listed and s.list_required else []))
        images, labels = _stems(img_dir, s.image_suffix, s.recursive), _stems(lab_dir, s.label_suffix, s.recursive)
        if listed and listed.is_file():
            text = self._read(lambda p: p.read_text(encoding="utf-8"), listed, "split list")
            stems = [x.strip() for x in text.splitlines() if x.strip()]
        else:
            stems = sorted(labels.keys() | (set() if s.shared_images else images.keys()))
        if not stems:
            raise FileNotFoundError(missing_message(bench, split, self.root, [lab_dir / f"*{s.label_suffix}"]))
        pairs = [((img_dir / f"{t}{s.image_suffix}", t in images), (lab_dir / f"{t}{s.label_suffix}", t in labels))
                 for t in stems]
        self.files = self._complete(pairs, allow_missing)

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> torch.Tensor:
        """LongTensor[H, W] of item i (after the benchmark's label mapping); a value that is
        neither a class nor the ignore label is a ``DatasetError`` naming the file."""
        path = self.files[i][1]
        arr = self._read(read_label, path, "label").astype(np.int64)
        if self.bench.label_map == "pc60":
            arr = np.where(arr == 255, 0, arr + 1)
        bad = ((arr < 0) | (arr >= self.num_classes)) & (arr != self.ignore_index)
        if bad.any():
            raise DatasetError(f"{path}: label value {int(arr[bad][0])} is not a {self.name} class "
                               f"(0..{self.num_classes - 1}) nor its ignore value {self.ignore_index}")
        return torch.from_numpy(arr)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        img_path, lab_path = self.files[i]
        image = self._read(read_image, img_path, "image")
        sem = self.label(i)
        if sem.shape != image.shape[1:]:
            raise DatasetError(f"{lab_path}: label is {sem.shape[0]}x{sem.shape[1]} (HxW), its image "
                               f"{img_path.name} {image.shape[1]}x{image.shape[2]}")
        stem = lab_path.name[: -len(self.bench.splits[self.split].label_suffix)]
        return {"image": image, "sem_seg": sem, "file_name": str(img_path), "image_id": stem,
                "sem_seg_file_name": str(lab_path)}


class PanopticDataset(_Base):
    """COCO-panoptic-format benchmark: images, segment-id PNGs and a JSON of segments.
    JSON category ids are mapped to contiguous ids in ascending-id order (detectron2).
    Missing files: as ``SemanticDataset``."""

    def __init__(self, bench: Benchmark, split: str, root: Path, allow_missing: bool = False):
        super().__init__(bench, split, root)
        s = bench.splits[split]
        img_dir, pan_dir, js = self.root / s.images, self.root / s.labels, self.root / s.json
        self._require(img_dir, pan_dir, js)
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
            cats = sorted(data["categories"], key=lambda c: c["id"])
            annotations = sorted(data["annotations"], key=lambda a: a["file_name"])
        except (ValueError, KeyError, TypeError) as e:   # not JSON, or not COCO-panoptic JSON
            raise DatasetError(f"{js}: not a COCO-panoptic JSON file ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:80]})") from None
        if len(cats) != self.num_classes:
            raise DatasetError(f"{js}: {len(cats)} categories, expected {self.num_classes}")
        self.categories = cats
        self.contiguous = {c["id"]: i for i, c in enumerate(cats)}
        self.thing_ids = [i for i, c in enumerate(cats) if c.get("isthing", 0)]
        self.stuff_ids = [i for i, c in enumerate(cats) if not c.get("isthing", 0)]
        if not annotations:
            raise FileNotFoundError(missing_message(bench, split, self.root, [js]))
        images, pans = set(os.listdir(img_dir)), set(os.listdir(pan_dir))
        pairs = [((img_dir / f"{Path(a['file_name']).stem}.jpg", f"{Path(a['file_name']).stem}.jpg" in images),
                  (pan_dir / a["file_name"], a["file_name"] in pans)) for a in annotations]
        self.files = self._complete(pairs, allow_missing)
        kept = {b for _, b in self.files}
        self.annotations = [a for a in annotations if pan_dir / a["file_name"] in kept]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        img_path, pan_path = self.files[i]
        ann = self.annotations[i]
        image = self._read(read_image, img_path, "image")
        pan = self._read(lambda p: rgb_to_id(np.asarray(Image.open(p).convert("RGB"))), pan_path, "panoptic PNG")
        if pan.shape != tuple(image.shape[1:]):
            raise DatasetError(f"{pan_path}: size {pan.shape} != image size {tuple(image.shape[1:])}")
        segments, sem = [], np.full(pan.shape, self.ignore_index, dtype=np.int64)
        for seg in ann["segments_info"]:
            if seg["category_id"] not in self.contiguous:
                raise DatasetError(f"{pan_path}: segment {seg['id']} has unknown category {seg['category_id']}")
            c = self.contiguous[seg["category_id"]]
            segments.append({"id": int(seg["id"]), "category_id": c, "isthing": c in self.thing_ids,
                             "iscrowd": int(seg.get("iscrowd", 0)), "area": int(seg.get("area", 0))})
            sem[pan == seg["id"]] = c
        return {"image": image, "sem_seg": torch.from_numpy(sem), "pan_seg": torch.from_numpy(pan),
                "segments_info": segments, "file_name": str(img_path), "image_id": ann["image_id"],
                "pan_seg_file_name": str(pan_path)}


def get_dataset(name: str, split: str = "val", root: str | os.PathLike | None = None,
                allow_missing: bool = False):
    """The reader of benchmark ``name`` (a key of ``BENCHMARKS``) for ``split``
    ("val" or "train"). Raises FileNotFoundError naming the expected paths and the
    prepare command when the files are not there, ``IncompleteDataset`` when some are
    missing (``allow_missing`` reads the complete pairs only). ``folder:PATH`` and
    ``coco:FILE.json`` are your own data (``sources.py``; ``root`` does not apply)."""
    from .sources import is_source, open_source
    if is_source(name):
        return open_source(name, split, allow_missing)
    bench = get_benchmark(name)
    if split not in bench.splits:
        raise KeyError(f"dataset {name!r} has splits {', '.join(bench.splits)}, not {split!r}")
    root = datasets_root(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"the datasets root {root} is a file, not a folder")
    cls = PanopticDataset if bench.task == PANOPTIC else SemanticDataset
    return cls(bench, split, root, allow_missing)


def _stems(folder: Path, suffix: str, recursive: bool) -> dict[str, Path]:
    """{relative path without ``suffix``: path} of the files in ``folder`` ending with ``suffix``."""
    found = folder.rglob(f"*{suffix}") if recursive else folder.glob(f"*{suffix}")
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: p for p in found}
