"""Drawing shared by every result type: class colours, blending a colour map over
the image, segment outlines and a legend panel beside the image."""
from __future__ import annotations

import colorsys
import math

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


LEGEND_ROW = 20          # px per legend row
LEGEND_TEXT_MAX = 260    # px: a longer entry is shortened with "…" (its share, after two spaces, is kept)
LEGEND_COLUMNS = 3       # rows wrap into at most this many columns before the panel grows below the image


def _text_width(text: str, font) -> int:
    """Pixels from the pen position to the right end of the drawn text (advance or ink, the larger)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return int(math.ceil(max(probe.textlength(text, font=font), probe.textbbox((0, 0), text, font=font)[2])))


def shorten(text: str, font, width: int) -> str:
    """``text`` cut with "…" to fit ``width`` px; in "name  12.3%" only the name is cut."""
    if _text_width(text, font) <= width:
        return text
    head, sep, tail = text.rpartition("  ")
    if not sep:
        head, tail = text, ""
    lo, hi = 0, len(head)           # the longest prefix of head that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_width(head[:mid] + "…" + sep + tail, font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return head[:lo] + "…" + sep + tail


def legend_layout(height: int, texts: list[str], font, max_rows: int = 40) -> tuple[list[tuple[int, int, str]], int, int]:
    """Where a legend beside an image of ``height`` px draws its entries:
    ([(x, y, text)] with x from the panel's left edge, panel width, panel height).
    Entries beyond ``max_rows`` become one "+N more" line; texts are shortened to
    ``LEGEND_TEXT_MAX``; rows wrap into columns to stay within the image height
    where ``LEGEND_COLUMNS`` allow."""
    shown = [shorten(t, font, LEGEND_TEXT_MAX) for t in texts[:max_rows]]
    if len(texts) > len(shown):
        shown.append(f"+{len(texts) - len(shown)} more")
    fit = max(1, (height - 12) // LEGEND_ROW)
    columns = min(LEGEND_COLUMNS, math.ceil(len(shown) / fit))
    rows = math.ceil(len(shown) / columns)
    col_w = 34 + max(_text_width(t, font) for t in shown) + 12
    places = [(8 + (i // rows) * col_w, 6 + (i % rows) * LEGEND_ROW, t) for i, t in enumerate(shown)]
    return places, 8 + columns * col_w, rows * LEGEND_ROW + 12


def with_legend(image: np.ndarray, entries: list[tuple[tuple[int, int, int], str]], max_rows: int = 40) -> Image.Image:
    """Image uint8 [H, W, 3] + legend rows (colour, text) drawn in a panel to its right
    (``legend_layout``: every entry lies inside the returned image)."""
    h, w = image.shape[:2]
    if not entries:
        return Image.fromarray(image)
    font = _font(13)
    places, panel_w, panel_h = legend_layout(h, [t for _, t in entries], font, max_rows)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (x, y, text) in enumerate(places):
        if i < min(len(entries), max_rows):
            colour = tuple(int(c) for c in entries[i][0])
            draw.rectangle([w + x, y + 2, w + x + 18, y + 16], fill=colour, outline=(0, 0, 0))
            draw.text((w + x + 26, y + 2), text, fill=(0, 0, 0), font=font)
        else:
            draw.text((w + x + 26, y + 2), text, fill=(80, 80, 80), font=font)
    return canvas


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding: segment id -> RGB with id = R + 256 G + 256² B."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
