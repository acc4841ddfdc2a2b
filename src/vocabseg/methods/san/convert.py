"""Published SAN checkpoints (Hugging Face ``Mendel192/san``) <-> our ``SAN``.

Published layout (the detectron2 ``SAN`` module's state dict, possibly under ``model``):

- ``clip_visual_extractor.``: ``conv1``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``resblocks.0..split-1``
- ``clip_rec_head.``: ``resblocks.0..`` (CLIP visual blocks ``split..``
  re-indexed from 0), ``ln_post``, ``proj``
- ``side_adapter_network.``: the same names as our ``side.``
- ``ov_classifier.``: the CLIP text tower (``transformer``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection``), ``logit_scale``,
  ``bg_embed`` and the causal text ``attn_mask`` (SAN re-registers CLIP's
  buffers as persistent ones): a constant we rebuild, checked, not loaded
- ``criterion.empty_weight``: the no-object class weights of training
  (171 ones then 0.1), a constant we rebuild: checked, not loaded.

Ours: ``clip.`` (one open_clip CLIP, visual blocks under
``clip.visual.transformer.resblocks``), ``side.``, ``bg_embed``.
"""
from __future__ import annotations

import os
import re

import torch

from ...convert import (
    CLIP_TEXT_KEYS, EOS_COEF, block_count, empty_weight, key_listing as _listing, load_file, unwrap,
    wrong_empty_weight)  # noqa: F401  (unwrap is part of this module API)

TEXT_KEYS = CLIP_TEXT_KEYS
STEM_KEYS = ("class_embedding", "positional_embedding", "conv1.", "ln_pre.")
SPLIT_BY_DEPTH = {12: 9, 24: 18}   # published feature/recognition split of CLIP ViT-B (12) and ViT-L (24)
TRAIN_CLASSES = 171


def detect(state_dict: dict) -> bool:
    """True for a published SAN state dict (or a checkpoint wrapping one)."""
    sd = unwrap(state_dict)
    return (any(k.startswith("side_adapter_network.") for k in sd)
            and any(k.startswith("clip_rec_head.") for k in sd))


def causal_mask(n: int) -> torch.Tensor:
    """open_clip's text attention mask: -inf above the diagonal, 0 elsewhere."""
    return torch.full((n, n), float("-inf")).triu_(1)


def _our_name(k: str, v: torch.Tensor, split: int) -> str | None:
    """Our name of published key ``k``; None for a checked constant; "" if unknown."""
    group, _, rest = k.partition(".")
    if group == "clip_visual_extractor" and rest.startswith("resblocks."):
        return "clip.visual.transformer." + rest
    if group == "clip_visual_extractor" and rest.startswith(STEM_KEYS):
        return "clip.visual." + rest
    if group == "clip_rec_head" and (m := re.match(r"resblocks\.(\d+)\.(.*)", rest)):
        return f"clip.visual.transformer.resblocks.{int(m.group(1)) + split}.{m.group(2)}"
    if group == "clip_rec_head" and (rest == "proj" or rest.startswith("ln_post.")):
        return "clip.visual." + rest
    if group == "side_adapter_network":
        return "side." + rest
    if k == "ov_classifier.bg_embed":
        return "bg_embed"
    if k == "ov_classifier.attn_mask":
        if not torch.equal(v.float(), causal_mask(v.shape[0])):
            raise ValueError("ov_classifier.attn_mask is not the causal text mask open_clip builds")
        return None
    if group == "ov_classifier" and rest.startswith(TEXT_KEYS):
        return "clip." + rest
    if k == "criterion.empty_weight":
        if wrong_empty_weight(v):
            raise ValueError(f"criterion.empty_weight should be ones then {EOS_COEF} (no object)")
        return None
    return ""


def to_ours(state_dict: dict, origin: dict | None = None) -> dict:
    """Published key names -> ours (tensors shared, not copied); ``origin``, when
    given, is filled with our name -> published name. Raises ValueError naming
    every key it cannot place, or a constant (``criterion.empty_weight``,
    ``ov_classifier.attn_mask``) that is not what SAN builds."""
    sd = unwrap(state_dict)
    split = block_count(sd, "clip_visual_extractor.resblocks.")
    if split == 0:
        raise ValueError("not a SAN checkpoint: no clip_visual_extractor.resblocks.* keys")
    out, unknown = {}, []
    for k, v in sd.items():
        name = _our_name(k, v, split)
        if name == "":
            unknown.append(k)
        elif name is not None:
            out[name] = v
            if origin is not None:
                origin[name] = k
    if unknown:
        raise ValueError("the SAN checkpoint has keys SAN does not define" + _listing("unexpected", unknown))
    return out


def from_ours(state_dict: dict, split: int | None = None, num_train_classes: int = TRAIN_CLASSES) -> dict:
    """Our key names -> the published layout (``ov_classifier.attn_mask`` and
    ``criterion.empty_weight`` for ``num_train_classes`` rebuilt). ``split`` defaults to 9 for 12-block and 18 for
    24-block CLIP ViTs."""
    depth = block_count(state_dict, "clip.visual.transformer.resblocks.")
    if split is None:
        if depth not in SPLIT_BY_DEPTH:
            raise ValueError(f"give split for a {depth}-block CLIP (known: {SPLIT_BY_DEPTH})")
        split = SPLIT_BY_DEPTH[depth]
    out, unknown = {}, []
    for k, v in state_dict.items():
        m = re.match(r"clip\.visual\.transformer\.resblocks\.(\d+)\.(.*)", k)
        rest = k[len("clip.visual."):] if k.startswith("clip.visual.") else None
        if m:
            i = int(m.group(1))
            out[f"clip_visual_extractor.resblocks.{i}.{m.group(2)}" if i < split
                else f"clip_rec_head.resblocks.{i - split}.{m.group(2)}"] = v
        elif rest is not None and (rest == "proj" or rest.startswith("ln_post.")):
            out["clip_rec_head." + rest] = v
        elif rest is not None and rest.startswith(STEM_KEYS):
            out["clip_visual_extractor." + rest] = v
        elif rest is None and k.startswith("clip.") and k[len("clip."):].startswith(TEXT_KEYS):
            out["ov_classifier." + k[len("clip."):]] = v
        elif k.startswith("side."):
            out["side_adapter_network." + k[len("side."):]] = v
        elif k == "bg_embed":
            out["ov_classifier.bg_embed"] = v
        else:
            unknown.append(k)
    if unknown:
        raise ValueError("keys with no published SAN name" + _listing("unknown", unknown))
    out["ov_classifier.attn_mask"] = causal_mask(state_dict["clip.positional_embedding"].shape[0])
    out["criterion.empty_weight"] = empty_weight(num_train_classes)
    return out


def load_state_dict(model, state_dict: dict) -> None:
    """Load a published SAN state dict into our ``SAN`` model. Any missing or
    unexpected key, a different CLIP split or a shape mismatch is an error."""
    origin: dict = {}
    ours = to_ours(state_dict, origin)
    split = block_count(unwrap(state_dict), "clip_visual_extractor.resblocks.")
    if split != model.split:
        raise ValueError(f"the checkpoint splits CLIP after block {split}, the model after {model.split}: "
                         "is it the right preset (san-vit-b16 / san-vit-l14)?")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(f"{origin[k]} (ours: {k})" for k in set(ours) - set(expected))
    shapes = [f"{k}: file {tuple(ours[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in ours and tuple(ours[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError("the SAN checkpoint does not fit the model" + _listing("missing", missing)
                         + _listing("unexpected", unexpected) + _listing("wrong shape", shapes))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()}, strict=True)


def load_published(model, path: str | os.PathLike, clip_weights: str | None = None) -> None:
    """Load a published ``.pth`` file (``san_vit_b_16.pth`` / ``san_vit_large_14.pth``,
    read with ``weights_only=True``) into ``model``: CLIP (both towers), side
    network and ``bg_embed`` all come from the file, so ``clip_weights`` must be None."""
    if clip_weights is not None:
        raise ValueError("a published SAN file holds its own CLIP (both towers); do not pass CLIP weights")
    sd = load_file(path)
    if not isinstance(sd, dict) or not detect(sd):
        raise ValueError(f"{path} is not a published SAN checkpoint "
                         "(expected side_adapter_network.* and clip_rec_head.* keys, maybe under 'model')")
    load_state_dict(model, sd)
