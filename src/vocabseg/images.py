"""Reading user images: paths, PIL images, numpy arrays or tensors -> uint8 RGB.

EXIF orientation is applied; grayscale, RGBA / LA (alpha dropped), palette,
CMYK, 1-bit, 16-bit and float images are converted. An unreadable file raises
``ImageError`` with one line saying which file and why.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB (orientation applied, 16-bit scaled to 8-bit)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] (or channels-first [1|3|4, H, W]) uint8 / uint16 / float (0..1) -> [H, W, 3] uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"the image is empty (shape {arr.shape})")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("the image array holds NaN or infinite values")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported image array type {arr.dtype}")


def load_image(image) -> torch.Tensor:
    """A path, PIL image, numpy array or tensor -> uint8 Tensor[3, H, W] (RGB).

    A float tensor [3, H, W] is read as 0..1; a uint8 tensor is taken as is.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        with _opened(path) as im:
            im.load()
            rgb = pil_to_rgb(im)
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ImageError(f"the image is empty ({image.width}x{image.height} pixels)")
        return torch.from_numpy(np.asarray(pil_to_rgb(image)).copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray):
        return torch.from_numpy(array_to_uint8(image).copy()).permute(2, 0, 1).contiguous()
    raise ImageError(f"cannot use a {type(image).__name__} as an image: give a path, a PIL image or an array")


def check_image_file(path: str | os.PathLike) -> None:
    """Raise ``ImageError`` unless ``path`` is a file whose header Pillow reads (the
    pixels are not decoded: cheap enough to check every input before a model loads)."""
    with _opened(Path(path)):
        pass


@contextlib.contextmanager
def _opened(path: Path):
    """``Image.open(path)``, with every way of failing turned into one-line ``ImageError``."""
    if not path.exists():
        if re.match(r"(https?|ftp|s3|gs):/", str(path)):
            raise ImageError(f"image not found: {path} (a URL is not downloaded: save the image and give its path)")
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image")
    if not path.is_file():      # a FIFO would block the read forever, a device never ends
        raise ImageError(f"cannot read image {path}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # sizes are ours to bound (limits.py)
            im = Image.open(path)
        with im:
            if im.width < 1 or im.height < 1:
                raise ImageError(f"cannot read image {path}: it has no pixels ({im.width}x{im.height})")
            yield im
    except Image.DecompressionBombError:
        raise ImageError(f"cannot read image {path}: too many pixels to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"cannot read image {path}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image file or a format Pillow cannot read"
    msg = str(e).split("\n")[0]
    return msg or type(e).__name__


def list_images(inputs, skipped: list | None = None) -> list[Path]:
    """Expand files, folders (their image files, sorted, not recursive) and quoted
    patterns (``"photos/*.jpg"``) into paths. Of a folder or a pattern, hidden files and
    the outputs vocabseg wrote there (listed in its manifest, see ``outputs.py``) are
    left out and appended to ``skipped`` if given. Missing paths are kept so the caller
    reports them one by one."""
    from .outputs import read_manifest
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            members = sorted(p.iterdir())
        elif not p.exists() and any(c in str(item) for c in "*?[") and glob.glob(str(item)):
            members = sorted(Path(f) for f in glob.glob(str(item)))
        else:
            out.append(p)
            continue
        own = {folder: read_manifest(folder) for folder in {f.parent for f in members}}
        for f in members:
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            if not (f.name.startswith(".") or f.name in own[f.parent]):
                out.append(f)
            elif skipped is not None:
                skipped.append(f)
    return out
