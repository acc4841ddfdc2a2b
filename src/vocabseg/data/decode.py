"""The file formats every dataset reader decodes: RGB images (EXIF orientation applied),
single-channel label maps, panoptic PNGs. Shared by the benchmark readers (``readers.py``)
and your own data (``sources.py``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def read_image(path: str | Path) -> torch.Tensor:
    """RGB image file -> uint8 Tensor[3, H, W]."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        arr = np.asarray(im)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str | Path) -> np.ndarray:
    """Single-channel label PNG (8-bit, palette or 16-bit) or 16-bit TIFF -> integer array [H, W]."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{path}: expected a single-channel label image, got mode {im.mode}")
        arr = np.array(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    return arr


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic PNG [H, W, 3] uint8 -> segment ids R + 256 G + 256² B, int64 [H, W]."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
