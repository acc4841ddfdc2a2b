"""Published SAN checkpoints (Hugging Face ``Mendel192/san``) <-> our ``SAN``.

Published layout (detectron2 ``SAN`` module, weights possibly under ``model``):

- ``clip_visual_extractor.``: ``conv1``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``resblocks.0..split-1``
- ``clip_rec_head.``: ``resblocks.0..`` (CLIP visual blocks split.. re-indexed
  from 0), ``ln_post``, ``proj``
- ``side_adapter_network.``: same names as our ``side.``
- ``ov_classifier.``: the CLIP text tower (``transformer``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection``), ``logit_scale``,
  the fixed causal ``attn_mask`` buffer, ``bg_embed``
- ``criterion.empty_weight``: the no-object class weights of training

Ours: ``clip.`` (one open_clip CLIP, visual blocks under
``clip.visual.transformer.resblocks``), ``side.``, ``bg_embed``. The causal
mask and ``empty_weight`` are constants we rebuild; they are checked, not
silently dropped.
"""
from __future__ import annotations

import os
import re

import torch

PUBLISHED_PREFIXES = ("clip_visual_extractor.", "clip_rec_head.", "side_adapter_network.", "ov_classifier.")
TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
             "logit_scale")
SPLIT_BY_DEPTH = {12: 9, 24: 18}   # published feature/recognition split of CLIP ViT-B (12) and ViT-L (24)
EOS_COEF = 0.1
TRAIN_CLASSES = 171


def unwrap(state_dict: dict) -> dict:
    """A detectron2 checkpoint keeps the weights under ``model``."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        return state_dict["model"]
    return state_dict


def detect(state_dict: dict) -> bool:
    """True for a published SAN state dict (or a checkpoint wrapping one)."""
    sd = unwrap(state_dict)
    return any(k.startswith("side_adapter_network.") for k in sd) and any(k.startswith("clip_rec_head.") for k in sd)


def causal_mask(n: int) -> torch.Tensor:
    """open_clip's text attention mask: -inf above the diagonal, 0 elsewhere."""
    return torch.full((n, n), float("-inf")).triu_(1)


def _extractor_depth(sd: dict) -> int:
    idx = {int(m.group(1)) for k in sd for m in [re.match(r"clip_visual_extractor\.resblocks\.(\d+)\.", k)] if m}
    if not idx:
        raise KeyError("published SAN state dict has no clip_visual_extractor.resblocks.*")
    return max(idx) + 1


def to_ours(state_dict: dict) -> dict:
    """Published key names -> ours. Raises KeyError on a key it cannot explain
    and ValueError when a constant buffer holds unexpected values."""
    sd = unwrap(state_dict)
    split = _extractor_depth(sd)
    out, unknown = {}, []
    for k, v in sd.items():
        if k.startswith("clip_visual_extractor."):
            rest = k[len("clip_visual_extractor."):]
            out[("clip.visual.transformer." if rest.startswith("resblocks.") else "clip.visual.") + rest] = v
        elif k.startswith("clip_rec_head."):
            rest = k[len("clip_rec_head."):]
            m = re.match(r"resblocks\.(\d+)\.(.*)", rest)
            if m:
                out[f"clip.visual.transformer.resblocks.{int(m.group(1)) + split}.{m.group(2)}"] = v
            elif rest in ("proj",) or rest.startswith("ln_post."):
                out["clip.visual." + rest] = v
            else:
                unknown.append(k)
        elif k.startswith("side_adapter_network."):
            out["side." + k[len("side_adapter_network."):]] = v
        elif k == "ov_classifier.bg_embed":
            out["bg_embed"] = v
        elif k == "ov_classifier.attn_mask":
            if not torch.equal(v.float(), causal_mask(v.shape[0])):
                raise ValueError("ov_classifier.attn_mask is not the causal text mask open_clip builds")
        elif k.startswith("ov_classifier."):
            rest = k[len("ov_classifier."):]
            if rest.startswith(TEXT_KEYS):
                out["clip." + rest] = v
            else:
                unknown.append(k)
        elif k == "criterion.empty_weight":
            if v.ndim != 1 or not torch.all(v[:-1] == 1):
                raise ValueError("criterion.empty_weight should be ones with the no-object weight last")
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"unexpected keys in the SAN checkpoint: {unknown[:10]}"
                       + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    return out


def from_ours(state_dict: dict, split: int | None = None, num_train_classes: int = TRAIN_CLASSES) -> dict:
    """Our key names -> the published layout (with the constant causal mask and
    ``criterion.empty_weight`` rebuilt). ``split`` defaults to 9 for 12-block and
    18 for 24-block CLIP ViTs."""
    depth = 1 + max(int(m.group(1)) for k in state_dict
                    for m in [re.match(r"clip\.visual\.transformer\.resblocks\.(\d+)\.", k)] if m)
    if split is None:
        if depth not in SPLIT_BY_DEPTH:
            raise ValueError(f"give split for a {depth}-block CLIP (known: {SPLIT_BY_DEPTH})")
        split = SPLIT_BY_DEPTH[depth]
    out, unknown = {}, []
    for k, v in state_dict.items():
        if k.startswith("clip.visual."):
            rest = k[len("clip.visual."):]
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", rest)
            if m:
                i = int(m.group(1))
                out[f"clip_visual_extractor.resblocks.{i}.{m.group(2)}" if i < split
                    else f"clip_rec_head.resblocks.{i - split}.{m.group(2)}"] = v
            elif rest == "proj" or rest.startswith("ln_post."):
                out["clip_rec_head." + rest] = v
            elif rest in ("class_embedding", "positional_embedding") or rest.startswith(("conv1.", "ln_pre.")):
                out["clip_visual_extractor." + rest] = v
            else:
                unknown.append(k)
        elif k.startswith("clip."):
            rest = k[len("clip."):]
            if not rest.startswith(TEXT_KEYS):
                unknown.append(k)
            out["ov_classifier." + rest] = v
        elif k.startswith("side."):
            out["side_adapter_network." + k[len("side."):]] = v
        elif k == "bg_embed":
            out["ov_classifier.bg_embed"] = v
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"keys with no published name: {unknown[:10]}")
    out["ov_classifier.attn_mask"] = causal_mask(state_dict["clip.positional_embedding"].shape[0])
    weight = torch.ones(num_train_classes + 1)
    weight[-1] = EOS_COEF
    out["criterion.empty_weight"] = weight
    return out


def load_into(model, state_dict: dict) -> None:
    """Load a published SAN state dict into our ``SAN`` model; any missing or
    unexpected key (or shape mismatch) is an error."""
    ours = to_ours(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise KeyError(f"SAN checkpoint does not fit the model: missing {missing[:10]} ({len(missing)}), "
                       f"unexpected {unexpected[:10]} ({len(unexpected)})")
    split = _extractor_depth(unwrap(state_dict))
    if split != model.split:
        raise ValueError(f"checkpoint splits CLIP after block {split}, the model after {model.split}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(ours[k].shape)]
    if bad:
        raise ValueError("shape mismatch: " + ", ".join(
            f"{k} {tuple(ours[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad[:5]))
    model.load_state_dict(ours, strict=True)
    model.reset_text_cache()


def load_file(model, path: str | os.PathLike) -> None:
    """Load a published ``.pth`` file (weights_only) into ``model``."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not detect(sd):
        raise ValueError(f"{path} is not a published SAN checkpoint (no side_adapter_network.* / clip_rec_head.* keys)")
    load_into(model, sd)
