"""Training-time augmentations shared by the SAN and FC-CLIP recipes.

Every transform takes a dataset item dict and returns a new dict (the input is
not modified) whose spatial entries stay aligned with the image:

- ``image``: uint8 Tensor[3, H, W] (RGB)
- ``sem_seg``: LongTensor[H, W], ``ignore_index`` where ignored (padding too)
- ``pan_seg``: LongTensor[H, W] panoptic segment ids (padding gets 0, the
  COCO-panoptic "void" id, which no segment uses)
- ``instances``: dict(labels=LongTensor[N], masks=BoolTensor[N, H, W]) (padding False)

Other keys (``segments_info``, ``file_name``, ...) are copied unchanged.

Randomness: each transform takes ``rng``, a ``numpy.random.Generator``; when it is
None a generator is seeded from torch's global RNG, so ``torch.manual_seed`` (and
DataLoader worker seeding) makes a run reproducible.

The geometry follows detectron2: ``ResizeShortestEdge`` ("choice" sampling, the
rounding of ``get_output_shape``), ``RandomCrop_CategoryAreaConstraint``,
``ResizeScale`` + ``FixedSizeCrop`` (LSJ), and the SSD colour distortion of
MaskFormer's ``ColorAugSSDTransform`` (brightness ±32, contrast and saturation
0.5–1.5, hue ±18 on OpenCV's 0..179 hue scale, with OpenCV's exact 8-bit HSV
arithmetic). Images are resized with PIL's bilinear filter and labels with
centre-aligned nearest neighbour (PIL NEAREST), exactly as detectron2 does.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..protocol import shortest_edge_size

IMAGE_PAD = 128
PAN_PAD = 0

Item = dict


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is not None:
        return rng
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


# --- geometric primitives (applied to every spatial entry) ---------------------
def _map_spatial(item: Item, image_fn, label_fn, ignore_index: int | None = None) -> Item:
    """Apply ``image_fn`` to the image and ``label_fn(x, pad_value)`` to sem_seg
    (pad ``ignore_index``, else the item's ``ignore_index`` key, else 255), pan_seg
    (pad 0) and instance masks (pad False)."""
    out = dict(item)
    out["image"] = image_fn(item["image"])
    if "sem_seg" in item:
        ignore = ignore_index if ignore_index is not None else item.get("ignore_index", 255)
        out["sem_seg"] = label_fn(item["sem_seg"], ignore)
    if "pan_seg" in item:
        out["pan_seg"] = label_fn(item["pan_seg"], PAN_PAD)
    if "instances" in item:
        inst = dict(item["instances"])
        m = inst["masks"]
        if m.shape[0] == 0:
            h, w = out["image"].shape[-2:]
            inst["masks"] = torch.zeros((0, h, w), dtype=torch.bool)
        else:
            inst["masks"] = label_fn(m, False)
        out["instances"] = inst
    return out


def resize(item: Item, size: tuple[int, int]) -> Item:
    """Resize to ``size`` = (H, W): PIL bilinear for the image, nearest (PIL NEAREST) for labels."""
    h, w = item["image"].shape[-2:]
    if (h, w) == tuple(size):
        return dict(item)

    def img(x):  # PIL bilinear on uint8, as detectron2's ResizeTransform
        pil = Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()

    def lab(x, _pad):
        y = x[None] if x.dim() == 2 else x
        dtype = y.dtype
        y = F.interpolate(y[None].float(), size=size, mode="nearest-exact")[0]
        y = y.to(dtype)
        return y[0] if x.dim() == 2 else y

    return _map_spatial(item, img, lab)


def crop(item: Item, y0: int, x0: int, h: int, w: int) -> Item:
    """Crop rows y0:y0+h and columns x0:x0+w (must lie inside the image)."""
    H, W = item["image"].shape[-2:]
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"crop ({y0}, {x0}, {h}, {w}) outside image of size {(H, W)}")
    return _map_spatial(item, lambda x: x[..., y0:y0 + h, x0:x0 + w].clone(),
                        lambda x, _p: x[..., y0:y0 + h, x0:x0 + w].clone())


def pad_to(item: Item, h: int, w: int, ignore_index: int | None = None) -> Item:
    """Pad bottom/right up to at least (h, w): image 128, sem_seg ``ignore_index``
    (default: the item's ``ignore_index`` key, else 255), pan_seg 0, masks False."""
    H, W = item["image"].shape[-2:]
    ph, pw = max(h - H, 0), max(w - W, 0)
    if ph == 0 and pw == 0:
        return dict(item)
    return _map_spatial(item, lambda x: F.pad(x, (0, pw, 0, ph), value=IMAGE_PAD),
                        lambda x, p: F.pad(x, (0, pw, 0, ph), value=p), ignore_index)


def hflip(item: Item) -> Item:
    return _map_spatial(item, lambda x: x.flip(-1), lambda x, _p: x.flip(-1))


# --- random transforms -------------------------------------------------------
class ResizeShortestEdge:
    """Short side drawn uniformly from ``short_sizes``, long side capped at ``max_size``."""

    def __init__(self, short_sizes: Sequence[int], max_size: int):
        self.short_sizes = list(short_sizes)
        self.max_size = max_size

    def __call__(self, item: Item, rng=None) -> Item:
        short = int(_rng(rng).choice(self.short_sizes))
        h, w = item["image"].shape[-2:]
        return resize(item, shortest_edge_size(h, w, short, self.max_size))


class RandomCrop:
    """Crop ``size`` = (h, w) (or the whole side when the image is smaller), then pad to
    ``size`` with 128 / ignore when ``pad``. With ``cat_max_ratio`` < 1, up to 10
    crops are tried until one holds more than one class and no class (ignore
    excluded) covers ``cat_max_ratio`` of its labelled pixels (SAN / MaskFormer's
    category-area constraint)."""

    def __init__(self, size: int | tuple[int, int], cat_max_ratio: float = 1.0, pad: bool = True,
                 ignore_index: int | None = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.pad = pad
        self.ignore_index = ignore_index

    def __call__(self, item: Item, rng=None) -> Item:
        rng = _rng(rng)
        H, W = item["image"].shape[-2:]
        ch, cw = min(H, self.size[0]), min(W, self.size[1])
        y0, x0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        if self.cat_max_ratio < 1.0 and "sem_seg" in item:
            ignore = self.ignore_index if self.ignore_index is not None else item.get("ignore_index", 255)
            for _ in range(10):
                patch = item["sem_seg"][y0:y0 + ch, x0:x0 + cw]
                cnt = torch.unique(patch[patch != ignore], return_counts=True)[1]
                if len(cnt) > 1 and cnt.max() < cnt.sum() * self.cat_max_ratio:
                    break
                y0, x0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        out = crop(item, y0, x0, ch, cw)
        return pad_to(out, *self.size, ignore_index=self.ignore_index) if self.pad else out


class RandomFlip:
    """Horizontal flip with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, item: Item, rng=None) -> Item:
        return hflip(item) if _rng(rng).random() < self.p else dict(item)


class ResizeScale:
    """LSJ resize: scale s ~ U(min_scale, max_scale); fit the image inside s * (th, tw)."""

    def __init__(self, min_scale: float, max_scale: float, target: tuple[int, int]):
        self.min_scale, self.max_scale, self.target = min_scale, max_scale, target

    def __call__(self, item: Item, rng=None) -> Item:
        s = _rng(rng).uniform(self.min_scale, self.max_scale)
        h, w = item["image"].shape[-2:]
        r = min(self.target[0] * s / h, self.target[1] * s / w)
        return resize(item, (int(np.round(h * r)), int(np.round(w * r))))


class FixedSizeCrop:
    """LSJ crop: one uniform draw places a ``size`` window (same fraction on both
    axes, like detectron2), then pad to ``size`` with 128 / ignore / void."""

    def __init__(self, size: tuple[int, int], ignore_index: int | None = None):
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, item: Item, rng=None) -> Item:
        H, W = item["image"].shape[-2:]
        u = _rng(rng).uniform(0.0, 1.0)
        y0, x0 = int(np.round(max(H - self.size[0], 0) * u)), int(np.round(max(W - self.size[1], 0) * u))
        out = crop(item, y0, x0, min(H, self.size[0]), min(W, self.size[1]))
        return pad_to(out, *self.size, ignore_index=self.ignore_index)


class PadTo:
    """Pad bottom/right to ``size`` (h, w) with 128 / ignore / void (MaskFormer's mapper pads to
    its size divisibility after all augmentations, so padding is never jittered or flipped)."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int | None = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index = ignore_index

    def __call__(self, item: Item, rng=None) -> Item:
        return pad_to(item, *self.size, ignore_index=self.ignore_index)


class ColorJitter:
    """SSD photometric distortion on the image only (labels untouched): brightness
    (p=.5, ±``brightness``), then either contrast→saturation→hue or
    saturation→hue→contrast, each with p=.5. Values clip to 0..255 after each step."""

    def __init__(self, brightness: float = 32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue: int = 18):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, item: Item, rng=None) -> Item:
        rng = _rng(rng)
        x = item["image"].permute(1, 2, 0).numpy().astype(np.float32)  # H, W, 3 RGB

        def conv(v, alpha: float = 1.0, beta: float = 0.0):  # float32 math, as the reference's
            return np.floor(np.clip(v * alpha + beta, 0, 255))  # uint8 cast truncates

        if rng.integers(2):
            x = conv(x, beta=float(rng.uniform(-self.brightness, self.brightness)))
        steps = ["contrast", "saturation", "hue"] if rng.integers(2) else ["saturation", "hue", "contrast"]
        for step in steps:
            if not rng.integers(2):
                continue
            if step == "contrast":
                x = conv(x, alpha=float(rng.uniform(*self.contrast)))
            elif step == "saturation":
                hsv = rgb_to_hsv(x)
                hsv[..., 1] = conv(hsv[..., 1], alpha=float(rng.uniform(*self.saturation)))
                x = hsv_to_rgb(hsv)
            else:
                hsv = rgb_to_hsv(x)
                hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-self.hue, self.hue + 1))) % 180
                x = hsv_to_rgb(hsv)
        out = dict(item)
        out["image"] = torch.from_numpy(x.astype(np.uint8)).permute(2, 0, 1).contiguous()
        return out


# OpenCV 8-bit HSV (hue 0..179): fixed-point forward tables, float32 inverse.
_I = np.arange(256, dtype=np.float64)
_SDIV = np.where(_I > 0, np.rint((255 << 12) / np.maximum(_I, 1)), 0).astype(np.int64)
_HDIV = np.where(_I > 0, np.rint((180 << 12) / (6.0 * np.maximum(_I, 1))), 0).astype(np.int64)
_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])  # tab index of r, g, b
SIMD_PIXELS = 32  # OpenCV's AVX2 HSV->RGB handles each row in blocks of 32 pixels (truncating), the rest rounds


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB 0..255 [..., 3] -> HSV as OpenCV's 8-bit COLOR_BGR2HSV computes it (H 0..179, S, V
    0..255; exact integer arithmetic), returned as float32."""
    x = x.astype(np.int64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    diff = v - x.min(-1)
    s = (diff * _SDIV[v] + (1 << 11)) >> 12
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + (1 << 11)) >> 12
    return np.stack([np.where(h < 0, h + 180, h), s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV [H, W, 3] -> RGB float32 0..255 as OpenCV's COLOR_HSV2BGR computes it on an
    AVX2 machine (float32 sectors; values truncated in the 32-pixel SIMD blocks of each
    row, rounded in the row's tail). Matches cv2 5.0 exactly in our checks."""
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * f32(6.0 / 180)
    s, v = hsv[..., 1].astype(f32) * f32(1 / 255), hsv[..., 2].astype(f32) * f32(1 / 255)
    sector = np.floor(h)
    h = h - sector
    sector = sector.astype(np.int64) % 6
    s64 = s.astype(np.float64)  # 1 - s*h is one fused multiply-add in OpenCV's AVX2 build
    t2, t3 = (1 - s64 * h).astype(f32), (1 - s64 * (f32(1) - h)).astype(f32)
    tab = np.stack([v, v * (f32(1) - s), v * t2, v * t3], -1)
    rgb = np.take_along_axis(tab, _SECTORS[sector], -1) * f32(255)
    w = rgb.shape[-2]
    simd = np.arange(w) < w - w % SIMD_PIXELS
    out = np.where(simd[:, None], np.trunc(rgb), np.rint(rgb))
    return np.clip(out, 0, 255).astype(np.float32)


class Compose:
    """Apply transforms in order, sharing one ``rng``."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, item: Item, rng=None) -> Item:
        rng = _rng(rng)
        for t in self.transforms:
            item = t(item, rng)
        return item


def semantic_train_transform(crop_size: int = 640, short_sizes: Sequence[int] | None = None,
                             max_size: int = 2560, cat_max_ratio: float = 1.0,
                             color: bool = True, ignore_index: int = 255) -> Compose:
    """SAN / MaskFormer semantic recipe, in the mapper's order: short side from
    {320, 384, ..., 960} (``int(0.1 * 640 * k)`` for k = 5..15 by default), long side
    <= 2560, crop 640 x 640 (category-area constraint ``cat_max_ratio``), colour
    jitter, horizontal flip, then padding to 640 x 640 with 128 / ignore."""
    if short_sizes is None:
        short_sizes = [int(crop_size * 0.1 * k) for k in range(5, 16)]
    ts = [ResizeShortestEdge(short_sizes, max_size),
          RandomCrop(crop_size, cat_max_ratio, pad=False, ignore_index=ignore_index)]
    if color:
        ts.append(ColorJitter())
    ts += [RandomFlip(), PadTo(crop_size, ignore_index=ignore_index)]
    return Compose(ts)


def lsj_transform(size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0) -> Compose:
    """FC-CLIP / Mask2Former large-scale jitter: flip, ResizeScale(0.1-2.0 of size), FixedSizeCrop."""
    return Compose([RandomFlip(), ResizeScale(min_scale, max_scale, (size, size)),
                    FixedSizeCrop((size, size))])


# --- targets ------------------------------------------------------------------
def sem_seg_to_masks(sem_seg: torch.Tensor, ignore_index: int = 255) -> dict:
    """LongTensor[H, W] -> dict(labels=LongTensor[N] (sorted class ids present),
    masks=BoolTensor[N, H, W]); the ignore label gets no mask."""
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_index]
    masks = sem_seg[None] == labels[:, None, None]
    return {"labels": labels.long(), "masks": masks}


def panoptic_to_instances(pan_seg: torch.Tensor, segments_info: Sequence[dict],
                          skip_crowd: bool = True, drop_empty: bool = False) -> dict:
    """Panoptic ids LongTensor[H, W] + segments_info -> dict(labels=LongTensor[N]
    (contiguous category ids), masks=BoolTensor[N, H, W]), one per segment in
    ``segments_info`` order; crowd segments are skipped (FC-CLIP / Mask2Former),
    empty masks (cropped away) kept unless ``drop_empty``."""
    labels, masks = [], []
    for seg in segments_info:
        if skip_crowd and seg.get("iscrowd", 0):
            continue
        m = pan_seg == seg["id"]
        if drop_empty and not m.any():
            continue
        labels.append(int(seg["category_id"]))
        masks.append(m)
    h, w = pan_seg.shape
    return {"labels": torch.tensor(labels, dtype=torch.long),
            "masks": torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)}
