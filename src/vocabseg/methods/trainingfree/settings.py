"""Published test settings of the training-free methods, per benchmark.

From each reference's ``configs/cfg_*.py`` and its segmentor's defaults
(wangf3014/SCLIP, sinahmr/NACLIP, mc-lan/ClearCLIP). Images are resized so the
short side is ``short`` (long side at most 2048, mmseg ``Resize(scale=(2048, short))``),
then windows ``window`` / ``stride`` (``whole``: one pass). ``scale`` multiplies
the cosines before the softmax; ``thd`` is the background probability threshold
and ``area`` SCLIP's area filter, both used only where the benchmark has a
background class (voc21, pc60, coco-object). Blank cells are the defaults of
the first row.

=============  ==============================  ==============================  ==============================
benchmark      SCLIP                           NACLIP (std 5, no PAMR)         ClearCLIP
=============  ==============================  ==============================  ==============================
(defaults)     short 336, 224/112, scale 40    short 336, 224/112, scale 40    short 448, 448/224, scale 50
voc21          scale 65, thd 0.1, area 0.1     whole image, thd 0.1            thd 0.5
pc60           scale 50, thd 0.1               thd 0.1                         thd 0.15
coco-object    scale 50, thd 0.1               thd 0.1                         thd 0.4
voc20                                          whole image
cityscapes     short 560                       short 560                       224/224
coco-stuff     short 448
pc59, ade150
=============  ==============================  ==============================  ==============================

ProxyCLIP (mc-lan/ProxyCLIP@e7b767f, ``configs/cfg_*.py`` and ``ProxyCLIPSegmentation``'s
defaults): short 336, windows 336 / 112, each window zero-padded (centred) to a
multiple of 56, scale 40; ADE-150, ADE-847, PC-459 and Cityscapes short 448,
Cityscapes windows 224 / 112; ``prob_thd`` VOC-21 0.2, PC-60 0.15, COCO-Object 0.25.
The proxy attention's beta 1.2 and gamma 3.0 are the segmentor's defaults, never
overridden by a config.

ResCLIP (yvhangyang/ResCLIP@0e085f7, ``configs/cfg_*.py``, the same for its SCLIP, ClearCLIP
and NACLIP bases): short 336 (Cityscapes 560), windows 224 / 112 (VOC-21, VOC-20: whole
image), scale 40, SFR temperature threshold ``temp_thd`` and the (τ, λ) of RCS and SFR
per benchmark (table in ``DATASETS["resclip"]``); ``delete_same_entity=True`` everywhere.
Its segmentor has no default ``temp_thd`` (None raises): ours is ADE-150's (our choice).

MaskCLIP has no configuration in these repositories; the papers' tables
evaluate it with the SCLIP / NACLIP protocol (short 336, Cityscapes 560,
224/112, scale 40). For its background threshold we take NACLIP's 0.1 (our
choice, not published).
"""
from __future__ import annotations

BENCHMARKS = ("voc21", "pc60", "coco-object", "voc20", "pc59", "coco-stuff", "cityscapes", "ade150")

_SLIDE_336 = dict(short_side=336, max_side=2048, mode="slide", window=224, stride=112,
                  logit_scale=40.0, prob_thd=0.0, area_thd=None)
METHODS = {
    "maskclip": dict(_SLIDE_336),
    "sclip": dict(_SLIDE_336),
    "naclip": dict(_SLIDE_336),
    "clearclip": dict(_SLIDE_336, short_side=448, window=448, stride=224, logit_scale=50.0),
    "proxyclip": dict(_SLIDE_336, window=336, pad_multiple=56),
    "resclip": dict(_SLIDE_336, temp_thd=0.25, rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7)),
}

DATASETS = {
    "maskclip": {"voc21": dict(prob_thd=0.1), "pc60": dict(prob_thd=0.1), "coco-object": dict(prob_thd=0.1),
                 "cityscapes": dict(short_side=560)},
    "sclip": {"voc21": dict(logit_scale=65.0, prob_thd=0.1, area_thd=0.1),
              "pc60": dict(logit_scale=50.0, prob_thd=0.1), "coco-object": dict(logit_scale=50.0, prob_thd=0.1),
              "coco-stuff": dict(short_side=448), "cityscapes": dict(short_side=560)},
    "naclip": {"voc21": dict(prob_thd=0.1, mode="whole"), "voc20": dict(mode="whole"),
               "pc60": dict(prob_thd=0.1), "coco-object": dict(prob_thd=0.1), "cityscapes": dict(short_side=560)},
    "clearclip": {"voc21": dict(prob_thd=0.5), "pc60": dict(prob_thd=0.15), "coco-object": dict(prob_thd=0.4),
                  "cityscapes": dict(window=224, stride=224)},
    "proxyclip": {"voc21": dict(prob_thd=0.2), "pc60": dict(prob_thd=0.15), "coco-object": dict(prob_thd=0.25),
                  "ade150": dict(short_side=448), "ade847": dict(short_side=448), "pc459": dict(short_side=448),
                  "cityscapes": dict(short_side=448, window=224, stride=112)},
    "resclip": {   # (τ, λ) of RCS and SFR; ResCLIP's configs/cfg_*.py
        "voc21": dict(mode="whole", prob_thd=0.1, temp_thd=0.50, rcs_weights=(2.0, 0.3), sfr_weights=(2.2, 0.7)),
        "pc60": dict(prob_thd=0.1, temp_thd=0.30, rcs_weights=(2.0, 0.3), sfr_weights=(1.8, 0.7)),
        "coco-object": dict(prob_thd=0.1, temp_thd=0.11, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7)),
        "voc20": dict(mode="whole", temp_thd=0.10, rcs_weights=(2.0, 0.6), sfr_weights=(2.1, 0.6)),
        "cityscapes": dict(short_side=560, temp_thd=0.10, rcs_weights=(2.0, 0.2), sfr_weights=(2.1, 0.6)),
        "pc59": dict(temp_thd=0.25, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7)),
        "ade150": dict(temp_thd=0.25, rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7)),
        "coco-stuff": dict(temp_thd=0.11, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7))},
}

# Published mIoU (CLIP ViT-B/16), from specs/benchmarks.md.
PUBLISHED = {
    "maskclip": dict(zip(BENCHMARKS, (43.4, 23.2, 20.6, 74.9, 26.4, 16.7, 24.9, 11.9))),
    "sclip": dict(zip(BENCHMARKS, (59.1, 30.4, 30.5, 80.4, 34.1, 22.4, 32.2, 16.1))),
    "clearclip": dict(zip(BENCHMARKS, (51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7))),
    "naclip": dict(zip(BENCHMARKS, (58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4))),
    # ProxyCLIP's paper (CLIP ViT-B/16, DINO proxy); its README has no per-benchmark table.
    "proxyclip": dict(zip(BENCHMARKS, (61.3, 35.3, 37.5, 80.3, 39.1, 26.5, 38.1, 20.2))),
    # ResCLIP's README (its figures), CLIP ViT-B/16, on each base method.
    "sclip+resclip": dict(zip(BENCHMARKS, (60.7, 32.9, 34.3, 84.6, 35.8, 23.9, 34.4, 17.6))),
    "clearclip+resclip": dict(zip(BENCHMARKS, (59.0, 32.9, 34.0, 87.1, 36.4, 24.3, 34.5, 17.8))),
    "naclip+resclip": dict(zip(BENCHMARKS, (61.1, 33.5, 35.0, 86.0, 36.8, 24.7, 35.9, 18.0))),
}

# Tiny presets (tests): 64 px images, 32 px windows with stride 16 on tiny-vit (patch 16).
TINY = dict(short_side=64, max_side=256, window=32, stride=16)


def settings_for(method: str, dataset: str, base: dict | None = None) -> dict:
    """``base`` (default: the method's defaults) with benchmark ``dataset``'s published settings;
    a benchmark the papers did not evaluate (pc459, ade847, ...) keeps the defaults."""
    from ...data.benchmarks import BENCHMARKS as ALL
    if dataset not in ALL:                # (every published one is a known benchmark)
        raise ValueError(f"unknown benchmark {dataset!r}; published {method} settings exist for {', '.join(BENCHMARKS)}")
    return {**(METHODS[method] if base is None else base), **DATASETS[method].get(dataset, {})}
