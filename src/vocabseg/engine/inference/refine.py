"""Post-processing of semantic score maps: ``--refine pamr``.

PAMR (``layers.pamr``) diffuses the model's scores at the original size over
neighbouring pixels of like colour, before ``finalize`` (softmax, thresholds), as
ResCLIP's / NACLIP's ``pamr_steps`` do: the image is the model's resized input
resized back to the original size. ``pamr`` is ResCLIP's demo setting (10
iterations, dilations 8, 16); ``pamr:ITERS:D1,D2,...`` any other, e.g. ResCLIP's
visualisation ``pamr:50:1,2,4,8,12,24``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import UserError
from ...layers.pamr import DILATIONS, ITERS, pamr
from ...protocol import Protocol, preprocess
from .image import ScoreMap

REFINE_HELP = "pamr (10 iterations, dilations 8,16) or pamr:ITERS:D1,D2,... (e.g. pamr:50:1,2,4,8,12,24)"


def parse_refine(spec: str | None) -> tuple[int, tuple[int, ...]] | None:
    """``spec`` -> (iterations, dilations), None for no refinement; a bad spec is a ``UserError``."""
    if spec in (None, "", "none"):
        return None
    parts = str(spec).split(":")
    try:
        if parts[0] != "pamr" or len(parts) not in (1, 3):
            raise ValueError
        if len(parts) == 1:
            return ITERS, DILATIONS
        iters, dil = int(parts[1]), tuple(int(d) for d in parts[2].split(","))
        if iters < 1 or not dil or min(dil) < 1:
            raise ValueError
        return iters, dil
    except ValueError:
        raise UserError(f"unknown refinement {spec!r}; use {REFINE_HELP}") from None


def refine_map(scores: ScoreMap, image: torch.Tensor, protocol: Protocol, refine) -> ScoreMap:
    """``scores`` of ``image`` [3, H, W] (0..1) refined with ``refine`` (a spec or
    ``parse_refine``'s tuple), as a lazy ``ScoreMap`` (the full map is built once, on first use)."""
    iters, dilations = parse_refine(refine) if isinstance(refine, (str, type(None))) else refine
    done: dict = {}

    def raw(r0: int, r1: int) -> torch.Tensor:
        if "map" not in done:
            h, w = scores.size
            full = scores.raw(0, h)                                       # [1, K, H, W] before finalize
            x = preprocess(image.to(full.device).float(), protocol)      # resized and normalised, as the model saw it
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            done["map"] = pamr(x, full, iters, dilations)
        return done["map"][..., r0:r1, :]
    return ScoreMap(scores.model, scores.vocab, scores.size, raw)
