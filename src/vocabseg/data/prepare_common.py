"""Helpers of the prepare converters (``prepare.py``, ``prepare_coco.py``): progress
counts, resumable writes and links, lookup tables."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write
from .benchmarks import DatasetError


class Progress:
    """Counts written / skipped outputs."""

    def __init__(self):
        self.written = 0
        self.skipped = 0

    def result(self) -> dict:
        return {"written": self.written, "skipped": self.skipped}


def require(src: Path, *rel: str, what: str) -> None:
    missing = [src / r for r in rel if not (src / r).exists()]
    if missing:
        raise FileNotFoundError(f"{what}: missing {', '.join(str(m) for m in missing)} under SRC {src}")


def save_array(path: Path, arr: np.ndarray, prog: Progress, **kw) -> None:
    """Write a label / image array (uint8 PNG, uint16 TIFF, JPEG by extension) unless present."""
    if path.exists():
        prog.skipped += 1
        return
    fmt = Image.registered_extensions()[path.suffix.lower()]   # the temporary name has no image extension
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format=fmt, **kw))
    prog.written += 1


def link_dir(src: Path, dst: Path) -> None:
    """Make ``dst`` show the folder ``src`` (a symlink), unless ``dst`` already exists."""
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir():
            raise DatasetError(f"{dst} exists and is not a folder: move it away and prepare again")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst, target_is_directory=True)


def link_file(src: Path, dst: Path, prog: Progress) -> None:
    """Hard-link ``src`` to ``dst`` (copy when linking is impossible), unless present."""
    if dst.exists():
        prog.skipped += 1
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with open(src, "rb") as s:
            atomic_write(dst, lambda f: shutil.copyfileobj(s, f))
    prog.written += 1


def track(items: Iterable, desc: str, total: int | None = None):
    return tqdm(items, desc=desc, total=total, unit="img", dynamic_ncols=True)


def pending(items: Iterable, desc: str, dst_of: Callable, prog: Progress):
    """(item, output path) for each item whose output does not exist yet, with a
    progress bar; existing outputs are counted as skipped (an interrupted run resumes)."""
    for item in track(items, desc):
        dst = dst_of(item)
        if dst.exists():
            prog.skipped += 1
            continue
        yield item, dst


def read_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def lookup(table: dict[int, int], size: int, default: int, dtype) -> np.ndarray:
    """A lookup array of ``size`` entries: ``table`` values, ``default`` elsewhere."""
    lut = np.full(size, default, dtype=dtype)
    for k, v in table.items():
        lut[k] = v
    return lut
