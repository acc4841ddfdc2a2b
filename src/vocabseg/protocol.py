"""The test-time protocol shared by the engine and the methods: resize so the
short side has a given length, normalise, pad, and cut into one whole-image
crop or a sliding-window grid.

Images enter as float tensors [B, 3, H, W] in 0..1 (RGB).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.clip import CLIP_MEAN, CLIP_STD


@dataclass
class Protocol:
    """Test-time protocol: resize so the short side is ``short_side`` (long side
    at most ``max_side``), then one ``whole`` pass (padded to a multiple of
    ``size_divisibility``) or ``slide`` windows of ``window`` with ``stride``."""
    short_side: int = 640
    max_side: int = 2560
    mode: str = "whole"
    window: int = 224
    stride: int = 112
    size_divisibility: int = 32
    pad_value: float = 0.0  # in normalised units; 0 is the mean colour
    resize: str = "torch"   # "pil" (detectron2), "cv2" (mmseg) or "torch": see engine.inference.resize_short_side
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def to_dict(self) -> dict:
        return asdict(self)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge output (H, W) for a target short side."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return max(int(nh + 0.5), 1), max(int(nw + 0.5), 1)     # a 1 x 20000 image keeps one row


def resized_size(h: int, w: int, short: int, max_side: int, rule: str = "mmcv") -> tuple[int, int]:
    """Output (H, W) of resizing to short side ``short`` with the long side at most
    ``max_side``, rounded as detectron2's ResizeShortestEdge (``rule="detectron2"``)
    or mmcv's imrescale (``"mmcv"``) do."""
    if rule == "detectron2":
        return shortest_edge_size(h, w, short, max_side)
    scale = min(max_side / max(h, w), short / min(h, w))
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


def resize_short_side(image: torch.Tensor, short: int, max_side: int, backend: str = "torch") -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> bilinear resize so min(H, W) == short and max(H, W) <= max_side.

    ``backend`` names the published pipeline being reproduced: ``"pil"`` — detectron2
    (SAN, FC-CLIP): PIL bilinear on the uint8 image; ``"cv2"`` — mmseg / mmcv (the
    training-free methods, SegCLIP): OpenCV INTER_LINEAR on the uint8 image;
    ``"torch"``: bilinear interpolation of the float image (align_corners=False).
    """
    h, w = image.shape[-2:]
    nh, nw = resized_size(h, w, short, max_side, "detectron2" if backend == "pil" else "mmcv")
    if (nh, nw) == (h, w):
        return image
    if backend == "torch":
        return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False)
    if backend not in ("pil", "cv2"):
        raise ValueError(f"unknown resize backend {backend!r}; use pil, cv2 or torch")
    out = []
    for im in (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        if backend == "pil":
            from PIL import Image
            im = np.array(Image.fromarray(im).resize((nw, nh), Image.BILINEAR))   # writable
        else:
            import cv2
            im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out.append(torch.from_numpy(np.ascontiguousarray(im)))
    return torch.stack(out).permute(0, 3, 1, 2).to(image.device, image.dtype) / 255.0


def normalize(image: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    mean = torch.tensor(protocol.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(protocol.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std


def pad_to_multiple(image: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    h, w = image.shape[-2:]
    ph = (multiple - h % multiple) % multiple if multiple > 1 else 0
    pw = (multiple - w % multiple) % multiple if multiple > 1 else 0
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph), value=value)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide grid: (y0, x0, y1, x1) boxes of at most ``window`` covering
    [0, h) x [0, w); the last row / column is shifted back to end at the border."""
    rows = max(math.ceil((h - window) / stride), 0) + 1
    cols = max(math.ceil((w - window) / stride), 0) + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + window, h), min(c * stride + window, w)
            y0, x0 = max(y1 - window, 0), max(x1 - window, 0)
            boxes.append((y0, x0, y1, x1))
    return boxes


def protocol_boxes(p: Protocol, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The crops of an image resized to [h, w]: the whole image, or the slide grid."""
    if p.mode == "whole":
        return [(0, 0, h, w)]
    if p.mode == "slide":
        return window_boxes(h, w, p.window, p.stride)
    raise ValueError(f"unknown inference mode {p.mode!r}")


def preprocess(image: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """[3, H, W] in 0..1 -> [1, 3, h, w] resized and normalised (not padded)."""
    x = image.unsqueeze(0) if image.ndim == 3 else image
    x = resize_short_side(x.float(), protocol.short_side, protocol.max_side, protocol.resize)
    return normalize(x, protocol)
