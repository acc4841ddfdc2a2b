"""Pixel limits: the largest image vocabseg takes (``vocabseg segment --max-pixels``,
``vocabseg.load(..., max_pixels=)``, the demo's ``--max-pixels``).

A 140 KB PNG can hold 144 million pixels, and segmenting holds a few bytes per
pixel per image (the image, its label map and confidence, the overlay; the class
scores are built a band of rows at a time). ``check_image`` reads the size from the
file header (Pillow opens lazily) so an oversized image is refused before it is
decoded, and before the model loads in the command line.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings

from .errors import ImageError, UserError

DEFAULT_MAX_PIXELS = 40_000_000    # san-vit-b16 + ADE-150 at 40 MP peaks at 3.8 GB (benchmarks/memory.md)


def check_max_pixels(value, what: str = "max_pixels") -> int | None:
    """A pixel limit as given (int, whole float such as 40e6, or None for no limit) ->
    int >= 1 or None. Anything else raises ``UserError`` naming ``what``."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value).is_integer() and value >= 1
    if not ok:
        raise UserError(f"{what} must be a whole number of pixels, at least 1 (or None for no limit), got {value!r}")
    return int(value)


def parse_max_pixels(text: str, what: str = "--max-pixels") -> int | None:
    """The command-line form: ``40000000``, ``40e6`` or ``none`` (no limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise UserError(f"{what} must be a whole number of pixels (e.g. 40000000 or 40e6) or none, "
                        f"got {text!r}") from None
    return check_max_pixels(value, what)


def image_size(image) -> tuple[int, int] | None:
    """(width, height) of a path (from its header, nothing decoded), PIL image, array
    or tensor as ``images.load_image`` reads it; None when it cannot be told (then
    ``load_image`` reports what is wrong)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # Pillow's decompression-bomb warning: we say it
                with Image.open(image) as im:
                    return im.size
        except Image.DecompressionBombError as e:        # refused by Pillow itself: read its numbers
            return _bomb_size(e)
        except Exception:                                # noqa: BLE001 (unreadable: load_image says why)
            return None
    if hasattr(image, "size") and isinstance(getattr(image, "size"), tuple):  # PIL image
        return tuple(image.size)
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:
        return shape[1], shape[0]
    if len(shape) == 3:
        first = shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
        return (shape[2], shape[1]) if first else (shape[1], shape[0])
    return None


def _bomb_size(e: Exception) -> tuple[int, int] | None:
    import re
    m = re.search(r"\((\d+) pixels\)", str(e))
    return (int(m.group(1)), 1) if m else None


def check_image(image, max_pixels: int | None, name: str | None = None) -> None:
    """Raise ``ImageError`` (one line) if ``image`` has more than ``max_pixels`` pixels."""
    if max_pixels is None:
        return
    size = image_size(image)
    if size is None or size[0] * size[1] <= max_pixels:
        return
    w, h = size
    shown = f"{w}x{h} pixels" if h > 1 or w <= max_pixels else f"{w} pixels"
    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else "the image")
    raise ImageError(f"{label} is {shown} ({w * h / 1e6:.1f} MP), above the limit of {max_pixels:,} pixels; "
                     f"downscale it or raise the limit (--max-pixels / max_pixels=)")


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (w, h) with w * h <= ``max_pixels`` and the aspect ratio of
    (width, height) up to rounding; the size itself when it already fits."""
    if width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * s)), max(1, math.floor(height * s))
    while w * h > max_pixels:     # only when one side was clamped to 1
        w, h = (w - 1, h) if w >= h else (w, h - 1)
    return w, h
