"""Published FC-CLIP checkpoints (detectron2 ``FCCLIP`` module) <-> our ``FCCLIP``.

Published layout (weights under ``model``):

- ``backbone.clip_model.``: the open_clip model. The released ``fcclip_cocopan.pth``
  leaves out the text transformer (``token_embedding``, ``transformer.*``,
  ``ln_final``); it comes from open_clip's weights for the same tag.
- ``sem_seg_head.pixel_decoder.``: ``input_proj.{0,1,2}.{0,1}``,
  ``transformer.level_embed``, ``transformer.encoder.layers.N.*``,
  ``adapter_1`` / ``layer_1`` (detectron2 Conv2d with ``norm``), ``mask_features``
- ``sem_seg_head.predictor.``: ``transformer_{cross,self}_attention_layers.N``,
  ``transformer_ffn_layers.N``, ``decoder_norm``, ``query_feat``, ``query_embed``,
  ``level_embed``, ``mask_embed.layers.N``, ``_mask_pooling_proj.{0,1}``,
  ``class_embed.layers.N``, ``logit_scale``
- ``void_embedding.weight``; ``criterion.empty_weight`` (training constant: ones,
  0.1 for the no-object class; checked, then dropped)

Ours: ``clip.``, ``pixel_decoder.``, ``decoder.``, ``void_embedding.weight``.
"""
from __future__ import annotations

import os

from ...backbones.clip import create_clip
from .model import CLIP_VARIANTS
from ...convert import (
    CLIP_TEXT_KEYS, EOS_COEF, PrefixMap, empty_weight, key_listing, load_file, mismatch, unwrap,
    wrong_empty_weight)

CLIP = "backbone.clip_model."
PIX = "sem_seg_head.pixel_decoder."
PRED = "sem_seg_head.predictor."
TRAIN_CLASSES = 133
# the open_clip text-tower keys the release omits
TEXT_ABSENT = ("token_embedding.", "transformer.", "ln_final.")
TEXT_KEYS = CLIP_TEXT_KEYS

# published prefix -> ours ({n}: a layer index); a prefix without a final "." is a whole key
NAMES = PrefixMap([
    (PIX + "transformer.level_embed", "pixel_decoder.level_embed"),
    (PIX + "transformer.encoder.", "pixel_decoder.encoder."),
    (PIX + "adapter_1.weight", "pixel_decoder.lateral.conv.weight"),
    (PIX + "adapter_1.norm.", "pixel_decoder.lateral.norm."),
    (PIX + "layer_1.weight", "pixel_decoder.output.conv.weight"),
    (PIX + "layer_1.norm.", "pixel_decoder.output.norm."),
    (PIX + "input_proj.", "pixel_decoder.input_proj."),
    (PIX + "mask_features.", "pixel_decoder.mask_features."),
    (PRED + "transformer_cross_attention_layers.{n}.multihead_attn.", "decoder.layers.{n}.cross_attn.attn."),
    (PRED + "transformer_cross_attention_layers.{n}.norm.", "decoder.layers.{n}.cross_attn.norm."),
    (PRED + "transformer_self_attention_layers.{n}.self_attn.", "decoder.layers.{n}.self_attn.attn."),
    (PRED + "transformer_self_attention_layers.{n}.norm.", "decoder.layers.{n}.self_attn.norm."),
    (PRED + "transformer_ffn_layers.{n}.", "decoder.layers.{n}.ffn."),
    (PRED + "decoder_norm.", "decoder.norm."),
    (PRED + "_mask_pooling_proj.", "decoder.pool_proj."),
    (PRED + "logit_scale", "decoder.logit_scale"),
    *[(PRED + f"{m}.", f"decoder.{m}.") for m in ("query_feat", "query_embed", "level_embed", "mask_embed",
                                                   "class_embed")],
    ("void_embedding.weight", "void_embedding.weight"),
    (CLIP, "clip."),
])


def detect(state_dict: dict) -> bool:
    """True for a published FC-CLIP state dict (or a checkpoint wrapping one)."""
    sd = unwrap(state_dict)
    return (any(k.startswith(PRED + "_mask_pooling_proj.") for k in sd)
            and any(k.startswith(CLIP) for k in sd) and "void_embedding.weight" in sd)


def to_ours(state_dict: dict) -> dict:
    """Published key names -> ours. Raises KeyError naming keys it cannot place and
    ValueError for a ResNet-CLIP checkpoint or an unexpected ``criterion.empty_weight``."""
    sd = unwrap(state_dict)
    if any(k.startswith(CLIP + "visual.attnpool.") for k in sd):
        raise ValueError("this is a ResNet-CLIP FC-CLIP checkpoint; vocabseg implements the ConvNeXt variants")
    empty = sd.get("criterion.empty_weight")
    if empty is not None and wrong_empty_weight(empty):
        raise ValueError(f"criterion.empty_weight should be ones with {EOS_COEF} last")
    out, unknown = NAMES.rename({k: v for k, v in sd.items() if k != "criterion.empty_weight"})
    if unknown:
        raise KeyError("unexpected keys in the FC-CLIP checkpoint" + key_listing("unknown", unknown))
    return out


def from_ours(state_dict: dict, text_tower: bool = False, num_train_classes: int = TRAIN_CLASSES) -> dict:
    """Our key names -> the published layout (``criterion.empty_weight`` rebuilt).
    Like the release, the text transformer is left out unless ``text_tower``."""
    keep = {k: v for k, v in state_dict.items()
            if text_tower or not (k.startswith("clip.") and k[len("clip."):].startswith(TEXT_ABSENT))}
    out, unknown = NAMES.rename(keep, backward=True)
    if unknown:
        raise KeyError("keys with no published name" + key_listing("unknown", unknown))
    out["criterion.empty_weight"] = empty_weight(num_train_classes)
    return out


def load_into(model, state_dict: dict, clip_state_dict: dict | None = None) -> dict:
    """Load a published state dict into ``model``. Text-tower keys the file lacks
    come from ``clip_state_dict`` (open_clip names); any other missing,
    unexpected or mis-shaped key is an error naming them. Returns
    dict(filled=[our keys taken from CLIP])."""
    return _load_ours(model, to_ours(state_dict), clip_state_dict)


def _load_ours(model, ours: dict, clip_state_dict: dict | None) -> dict:
    """``load_into`` of a state dict already in our key names."""
    expected = model.state_dict()
    text_absent = [k for k in expected if k not in ours
                   and k.startswith("clip.") and k[len("clip."):].startswith(TEXT_KEYS)]
    filled = []
    if text_absent and clip_state_dict is not None:
        clip = unwrap(clip_state_dict)
        filled = [k for k in text_absent if k[len("clip."):] in clip]
        ours.update({k: clip[k[len("clip."):]] for k in filled})
    problems = mismatch(expected, ours)
    if problems:
        hint = (" (the text tower is missing: pass the CLIP weights)"
                if any(k not in ours for k in text_absent) else "")
        raise ValueError("FC-CLIP checkpoint does not fit the model" + hint + problems)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()}, strict=True)
    return {"filled": filled}


def load_published(model, path: str | os.PathLike, clip_weights: str | None = None) -> dict:
    """Load ``fcclip_cocopan.pth`` (as distributed) into ``model``. The text
    tower the file lacks comes from open_clip: ``clip_weights`` (a tag or a
    local file), default the model's published CLIP tag."""
    sd = load_file(path)
    if not detect(sd):
        raise ValueError(f"{path} is not a published FC-CLIP checkpoint "
                         f"(no {PRED}_mask_pooling_proj.* / {CLIP}* / void_embedding keys)")
    ours = to_ours(sd)
    clip_sd = None
    if any(k not in ours for k in model.state_dict() if k.startswith("clip.")):
        tag = clip_weights or CLIP_VARIANTS.get(model.clip_arch)
        if tag is None:
            raise ValueError(f"{path} lacks the text tower and {model.clip_arch} has no default CLIP "
                             f"weights: pass clip_weights (an open_clip tag or file)")
        clip_sd = create_clip(model.clip_arch, tag, quick_gelu=False)[0].state_dict()   # weights only
    return _load_ours(model, ours, clip_sd)
