"""Published CAT-Seg checkpoints (``model_base.pth`` / ``model_large.pth``, the
detectron2 ``CATSeg`` module's state dict under ``model``) <-> our ``CATSeg``.

Published layout -> ours:

- ``sem_seg_head.predictor.clip_model.*`` -> ``clip.*``: the OpenAI CLIP, both
  towers, attention kept as ``q_proj_weight`` / ``k_proj_weight`` /
  ``v_proj_weight`` + ``in_proj_bias`` (our CLIP keeps the same split)
- ``sem_seg_head.predictor.transformer.*`` -> ``aggregator.*`` (same names), except
  ``layers.<i>.swin_block.block_2.attn_mask``: the shifted-window mask, a constant
  we rebuild: checked, not loaded
- ``upsample1.*``, ``upsample2.*`` -> the same names.

The pixel mean / std buffers are not persistent, so the file does not hold them.
"""
from __future__ import annotations

import os
import re

import torch

from ...convert import key_listing, load_file, mismatch, unwrap

CLIP = "sem_seg_head.predictor.clip_model."
AGG = "sem_seg_head.predictor.transformer."
MASK = re.compile(r"layers\.(\d+)\.swin_block\.(block_\d)\.attn_mask$")


def detect(state_dict: dict) -> bool:
    """True for a published CAT-Seg state dict (or a checkpoint wrapping one)."""
    sd = unwrap(state_dict)
    return any(k.startswith(CLIP) for k in sd) and any(k.startswith(AGG) for k in sd)


def to_ours(state_dict: dict, model=None) -> dict:
    """Published key names -> ours (tensors shared). The shifted-window masks are
    compared with ``model``'s (when given) and dropped. Raises ValueError naming
    every key it cannot place, or a mask that differs."""
    out, unknown = {}, []
    for k, v in unwrap(state_dict).items():
        if k.startswith(CLIP):
            out["clip." + k[len(CLIP):]] = v
        elif k.startswith(AGG) and (m := MASK.match(k[len(AGG):])):
            if model is not None:
                block = getattr(model.aggregator.layers[int(m.group(1))].swin_block, m.group(2))
                if block.attn_mask is None or tuple(v.shape) != tuple(block.attn_mask.shape) \
                        or not torch.equal(v.float().cpu(), block.attn_mask.float().cpu()):
                    raise ValueError(f"{k} is not the shifted-window mask this model builds")
        elif k.startswith(AGG):
            out["aggregator." + k[len(AGG):]] = v
        elif k.startswith(("upsample1.", "upsample2.")):
            out[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise ValueError("the CAT-Seg checkpoint has keys CAT-Seg does not define" + key_listing("unexpected", unknown))
    return out


def from_ours(model) -> dict:
    """Our model's state dict in the published layout (shifted-window masks included)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("clip."):
            out[CLIP + k[len("clip."):]] = v
        elif k.startswith("aggregator."):
            out[AGG + k[len("aggregator."):]] = v
        else:
            out[k] = v
    for i, layer in enumerate(model.aggregator.layers):
        for name in ("block_1", "block_2"):
            mask = getattr(layer.swin_block, name).attn_mask
            if mask is not None:
                out[f"{AGG}layers.{i}.swin_block.{name}.attn_mask"] = mask.clone()
    return out


def load_state_dict(model, state_dict: dict) -> None:
    """Load a published CAT-Seg state dict into our ``CATSeg``: any missing or
    unexpected key, or a shape mismatch, is an error naming it."""
    ours = to_ours(state_dict, model)
    expected = model.state_dict()
    problem = mismatch(expected, ours)
    if problem:
        raise ValueError("the CAT-Seg checkpoint does not fit the model (is it the right preset, "
                         "catseg-vit-b16 / catseg-vit-l14?)" + problem)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()}, strict=True)


def load_published(model, path: str | os.PathLike, clip_weights: str | None = None) -> None:
    """Load ``model_base.pth`` / ``model_large.pth`` (read with ``weights_only=True``):
    CLIP (both towers, fine-tuned), the aggregator and the guidance upsamplers all
    come from the file, so ``clip_weights`` must be None."""
    if clip_weights is not None:
        raise ValueError("a published CAT-Seg file holds its own fine-tuned CLIP; do not pass CLIP weights")
    sd = load_file(path)
    if not isinstance(sd, dict) or not detect(sd):
        raise ValueError(f"{path} is not a published CAT-Seg checkpoint (expected sem_seg_head.predictor."
                         "clip_model.* and sem_seg_head.predictor.transformer.* keys, maybe under 'model')")
    load_state_dict(model, sd)
