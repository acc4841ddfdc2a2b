"""Inference on one image: the test-time protocol (``vocabseg.protocol``) carried
out with a model. Image-side work (``encode``) is kept apart from the
vocabulary-dependent classification (``scores``) so that a cached image can be
re-scored.

Images enter as float tensors [3, H, W] in 0..1 (RGB).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import torch

from ...layers.mask_semantic import resize_rows
from ...model import SegModel
from ...protocol import Protocol, pad_to_multiple, preprocess, protocol_boxes
from ...results import labels_and_confidence


@dataclass
class ImageFeatures:
    """The vocabulary-independent part of one image's inference."""
    size: tuple[int, int]            # original H, W
    resized: tuple[int, int]         # H, W after resizing (before padding)
    boxes: list                      # window boxes in the resized image ([(0,0,H,W)] for whole)
    padded: list                     # padded size of each window's input
    features: list                   # model.encode_image output per window


@torch.no_grad()
def encode(model, image: torch.Tensor, protocol: Protocol | None = None) -> ImageFeatures:
    """Image-side work for one image [3, H, W] (0..1)."""
    p = protocol or model.protocol
    size = tuple(image.shape[-2:])
    x = preprocess(image, p)
    h, w = x.shape[-2:]
    boxes = protocol_boxes(p, h, w)
    feats, padded = [], []
    for (y0, x0, y1, x1) in boxes:
        crop = pad_to_multiple(x[..., y0:y1, x0:x1], p.size_divisibility, p.pad_value)
        padded.append(tuple(crop.shape[-2:]))
        feats.append(model.encode_image(crop))
    return ImageFeatures(size, (h, w), boxes, padded, feats)


def map_tensors(fn, features):
    """``features`` (an ``encode_image`` output: tensors, dicts, dataclasses, lists / tuples
    of them) with ``fn`` applied to every tensor; other values kept."""
    if isinstance(features, torch.Tensor):
        return fn(features)
    if isinstance(features, dict):
        return {k: map_tensors(fn, v) for k, v in features.items()}
    if is_dataclass(features) and not isinstance(features, type):
        return replace(features, **{f.name: map_tensors(fn, getattr(features, f.name))
                                    for f in fields(features) if f.init})
    if isinstance(features, (list, tuple)):
        items = [map_tensors(fn, v) for v in features]
        return type(features)(*items) if hasattr(features, "_fields") else type(features)(items)
    return features


def select(features, j: int):
    """Image ``j`` of a batch of ``encode_image`` outputs: every tensor sliced to ``[j:j+1]``."""
    return map_tensors(lambda t: t[j:j + 1] if t.ndim else t, features)


BAND_FLOATS = 1 << 26     # one band of full-size scores: 256 MB of float32 (most images: one band)


class ScoreMap:
    """An image's final [C, H, W] scores, computed a band of rows at a time so that the
    full map need not exist. ``raw(r0, r1)`` gives the model's [1, K, r1 - r0, W]
    scores of those rows; ``rows`` finalizes them. An image of one band is computed
    exactly as the full map; with several bands a value can differ from it in the last
    bit (vectorised kernels round by the tensor's shape), never more."""

    def __init__(self, model, vocab, size, raw):
        self.model, self.vocab, self.size, self.raw = model, vocab, tuple(size), raw
        self.channels = max(len(vocab), len(vocab.prompts))
        self._stats, self._stats_done, self._whole = None, False, None

    def band(self) -> int:
        """Rows per band: about ``BAND_FLOATS`` scores."""
        return max(1, BAND_FLOATS // (self.channels * self.size[1]))

    @torch.no_grad()
    def stats(self):
        """``model.image_stats`` summed over the image (None for most models)."""
        if type(self.model).image_stats is SegModel.image_stats:
            return None
        if not self._stats_done:
            total, h, band = None, self.size[0], self.band()
            for r0 in range(0, h, band):
                raw = self.raw(r0, min(r0 + band, h))
                if band >= h:       # one band: kept for ``rows`` rather than computed twice
                    self._whole = raw
                s = self.model.image_stats(raw, self.vocab)
                if s is None:
                    break
                total = s if total is None else total + s
            self._stats, self._stats_done = total, True
        return self._stats

    @torch.no_grad()
    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """[C, r1 - r0, W] final scores of rows r0..r1."""
        stats = self.stats()
        raw = self._whole if self._whole is not None and (r0, r1) == (0, self.size[0]) else self.raw(r0, r1)
        self._whole = None
        if type(self.model).finalize is SegModel.finalize:
            return raw[0]
        extra = () if stats is None else (stats,)
        return self.model.finalize(raw, self.vocab, *extra)[0]


class MeanMap:
    """The mean of several ``ScoreMap`` of one image, some of a flipped image
    (``flips[i]``: flip its rows back): test-time augmentation, a band at a time."""

    def __init__(self, maps: list, flips: list[bool]):
        self.maps, self.flips = maps, flips
        self.size, self.vocab = maps[0].size, maps[0].vocab
        self.channels = maps[0].channels

    def band(self) -> int:
        return self.maps[0].band()

    @torch.no_grad()
    def rows(self, r0: int, r1: int) -> torch.Tensor:
        total = None
        for m, flip in zip(self.maps, self.flips):
            out = m.rows(r0, r1)
            out = out.flip(-1) if flip else out
            total = out if total is None else total + out
        return total / len(self.maps)


def score_map(model, feats: ImageFeatures, text: torch.Tensor, vocab) -> ScoreMap:
    """The lazy [C, H, W] scores of an image from its cached features.

    One window (a whole-image pass): ``model.classify_at`` crops the padding and resizes
    to the original size its own way (mask classifiers resize their mask logits before
    their sigmoid / softmax, as Mask2Former's ``sem_seg_postprocess`` does). Several
    windows: each window's ``classify`` scores, cropped, are averaged where they overlap
    and resized here (``window_map``)."""
    if len(feats.boxes) == 1:
        return whole_map(model, feats.features[0], text, vocab, feats.boxes[0], feats.size)
    h, w = feats.resized
    total = count = None
    for (y0, x0, y1, x1), f in zip(feats.boxes, feats.features):
        s = model.classify(f, text, vocab)[..., : y1 - y0, : x1 - x0]   # crop the padding
        if total is None:
            total = s.new_zeros((s.shape[0], s.shape[1], h, w))
            count = s.new_zeros((1, 1, h, w))
        total[..., y0:y1, x0:x1] += s
        count[..., y0:y1, x0:x1] += 1
    return window_map(model, total, count, feats.size, vocab)


def whole_map(model, features, text: torch.Tensor, vocab, box, size) -> ScoreMap:
    """The lazy scores of the one window ``box`` (y0, x0, y1, x1) covering an image of
    original ``size``, from its ``encode_image`` output."""
    y0, x0, y1, x1 = box
    crop, size = (y1 - y0, x1 - x0), tuple(size)
    return ScoreMap(model, vocab, size,
                    lambda r0, r1: model.classify_at(features, text, vocab, crop=crop, size=size, rows=(r0, r1)))


def window_map(model, total: torch.Tensor, count: torch.Tensor, size, vocab) -> ScoreMap:
    """Window scores summed into ``total`` [1, K, h, w] (``count`` windows per pixel) ->
    the lazy scores of their mean resized (bilinear) to the original ``size``."""
    mean = total / count
    hw = tuple(mean.shape[-2:])
    return ScoreMap(model, vocab, size, lambda r0, r1: resize_rows(mean, hw, hw, tuple(size), r0, r1))


@torch.no_grad()
def semantic(scores, keep_scores: bool = False, band: int | None = None):
    """(labels LongTensor [H, W], confidence float [H, W], scores [C, H, W] or None) on the
    CPU from a ``ScoreMap`` / ``MeanMap``, a band of ``band`` rows at a time: the full
    [C, H, W] map exists only with ``keep_scores``. Labels and confidence are those
    ``results.labels_and_confidence`` gives on the full map."""
    (h, w), band = scores.size, band or scores.band()
    labels = torch.empty(h, w, dtype=torch.long)
    confidence = torch.empty(h, w)
    full = None
    nonnegative = True
    r0 = 0
    while r0 < h:
        r1 = min(r0 + band, h)
        s = scores.rows(r0, r1).float().cpu()
        if nonnegative and s.shape[0] > 1 and bool(s.amin() < 0):
            nonnegative, r0 = False, 0          # the softmax confidence, from the first row again
            continue
        if full is None and keep_scores:
            full = torch.empty(s.shape[0], h, w)
        if full is not None:
            full[:, r0:r1] = s
        labels[r0:r1], confidence[r0:r1] = labels_and_confidence(s, nonnegative)
        r0 = r1
    return labels, confidence, full


@torch.no_grad()
def scores(model, feats: ImageFeatures, text: torch.Tensor, vocab) -> torch.Tensor:
    """[C, H, W] per-class scores at the original size from cached image features
    (``score_map`` assembled; prefer ``semantic`` when only labels are needed)."""
    return full_scores(score_map(model, feats, text, vocab))


@torch.no_grad()
def full_scores(scores) -> torch.Tensor:
    """The whole [C, H, W] map of a ``ScoreMap`` / ``MeanMap`` (on the model's device)."""
    h, band = scores.size[0], scores.band()
    return torch.cat([scores.rows(r0, min(r0 + band, h)) for r0 in range(0, h, band)], 1)


def whole_scores(model, features, text: torch.Tensor, vocab, box, size) -> torch.Tensor:
    """[C, H, W] scores of the one window ``box`` (see ``whole_map``)."""
    return full_scores(whole_map(model, features, text, vocab, box, size))


def finish_windows(model, total: torch.Tensor, count: torch.Tensor, size, vocab) -> torch.Tensor:
    """[C, H, W] scores of summed windows (see ``window_map``)."""
    return full_scores(window_map(model, total, count, size, vocab))


def infer(model, image: torch.Tensor, text: torch.Tensor, vocab, protocol: Protocol | None = None) -> torch.Tensor:
    """Whole protocol for one image [3, H, W] in 0..1 -> [C, H, W] class scores."""
    return scores(model, encode(model, image, protocol), text, vocab)


def _whole(model, feats: ImageFeatures, task: str):
    if len(feats.features) != 1:
        raise ValueError(f"{task} inference needs a whole-image pass, got {len(feats.features)} windows")
    if task not in model.tasks:
        raise ValueError(f"{type(model).__name__} does not do {task} inference")
    return feats.features[0]


@torch.no_grad()
def panoptic(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"pan_seg": IntTensor [H, W], "segments": [...]} at the original size (models with ``panoptic``)."""
    return model.panoptic(_whole(model, feats, "panoptic"), text, vocab, feats.resized, feats.size, **kw)


@torch.no_grad()
def instances(model, feats: ImageFeatures, text: torch.Tensor, vocab, **kw) -> dict:
    """{"masks": BoolTensor [N, H, W], "labels", "scores"} at the original size (models with ``instances``)."""
    return model.instances(_whole(model, feats, "instance"), text, vocab, feats.resized, feats.size, **kw)
