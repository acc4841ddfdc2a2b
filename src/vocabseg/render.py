"""Drawing shared by every result type: class colours, blending a colour map over
the image, segment outlines and a legend panel beside the image."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Well-separated colours for the first classes; later ones walk the hue circle.
_BASE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
         (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
         (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
         (0, 0, 128), (128, 128, 128)]


def palette(n: int) -> np.ndarray:
    """uint8 [n, 3]: colour of class i (stable: class i always gets the same colour)."""
    out = list(_BASE[:n])
    for i in range(len(out), n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.4 * ((i * 7) % 5) / 4
        v = 0.6 + 0.4 * ((i * 3) % 4) / 3
        out.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v)))
    return np.array(out, dtype=np.uint8).reshape(n, 3)


def blend(image: np.ndarray, colours: np.ndarray, alpha: float, where: np.ndarray | None = None) -> np.ndarray:
    """``image`` and ``colours`` uint8 [H, W, 3] -> alpha blend (only at ``where`` if given)."""
    out = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    if where is not None:
        out = np.where(where[..., None], out, image.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def outlines(ids: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def with_legend(image: np.ndarray, entries: list[tuple[tuple[int, int, int], str]], max_rows: int = 40) -> Image.Image:
    """Image uint8 [H, W, 3] + legend rows (colour, text) drawn in a panel to its right."""
    h, w = image.shape[:2]
    if not entries:
        return Image.fromarray(image)
    row = 20
    shown = entries[:max_rows]
    more = len(entries) - len(shown)
    font = _font(13)
    text_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for _, t in shown)
    panel_w = 36 + text_w + 12
    panel_h = row * (len(shown) + (1 if more else 0)) + 12
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (colour, text) in enumerate(shown):
        y = 6 + i * row
        draw.rectangle([w + 8, y + 2, w + 26, y + 16], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((w + 34, y + 2), text, fill=(0, 0, 0), font=font)
    if more:
        draw.text((w + 34, 6 + len(shown) * row + 2), f"+{more} more", fill=(80, 80, 80), font=font)
    return canvas


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding: segment id -> RGB with id = R + 256 G + 256² B."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
