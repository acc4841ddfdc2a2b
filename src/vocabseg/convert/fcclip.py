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
import re

import torch

CLIP = "backbone.clip_model."
PIX = "sem_seg_head.pixel_decoder."
PRED = "sem_seg_head.predictor."
EOS_COEF = 0.1
TRAIN_CLASSES = 133
# open_clip text-tower keys; the release omits the first three groups
TEXT_ABSENT = ("token_embedding.", "transformer.", "ln_final.")
TEXT_KEYS = TEXT_ABSENT + ("positional_embedding", "text_projection", "logit_scale")

# (published regex, our template) for the heads; applied in order, first match wins
_RULES = [
    (PIX + r"transformer\.level_embed$", "pixel_decoder.level_embed"),
    (PIX + r"transformer\.encoder\.(.+)$", r"pixel_decoder.encoder.\1"),
    (PIX + r"adapter_1\.weight$", "pixel_decoder.lateral.conv.weight"),
    (PIX + r"adapter_1\.norm\.(.+)$", r"pixel_decoder.lateral.norm.\1"),
    (PIX + r"layer_1\.weight$", "pixel_decoder.output.conv.weight"),
    (PIX + r"layer_1\.norm\.(.+)$", r"pixel_decoder.output.norm.\1"),
    (PIX + r"((?:input_proj|mask_features)\..+)$", r"pixel_decoder.\1"),
    (PRED + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)$", r"decoder.layers.\1.cross_attn.attn.\2"),
    (PRED + r"transformer_cross_attention_layers\.(\d+)\.norm\.(.+)$", r"decoder.layers.\1.cross_attn.norm.\2"),
    (PRED + r"transformer_self_attention_layers\.(\d+)\.self_attn\.(.+)$", r"decoder.layers.\1.self_attn.attn.\2"),
    (PRED + r"transformer_self_attention_layers\.(\d+)\.norm\.(.+)$", r"decoder.layers.\1.self_attn.norm.\2"),
    (PRED + r"transformer_ffn_layers\.(\d+)\.(.+)$", r"decoder.layers.\1.ffn.\2"),
    (PRED + r"decoder_norm\.(.+)$", r"decoder.norm.\1"),
    (PRED + r"_mask_pooling_proj\.(.+)$", r"decoder.pool_proj.\1"),
    (PRED + r"((?:query_feat|query_embed|level_embed|mask_embed|class_embed)\..+|logit_scale)$", r"decoder.\1"),
    (r"void_embedding\.weight$", "void_embedding.weight"),
]
# our regex -> published template (the inverse of _RULES)
_INVERSE = [
    (r"pixel_decoder\.level_embed$", PIX + "transformer.level_embed"),
    (r"pixel_decoder\.encoder\.(.+)$", PIX + r"transformer.encoder.\1"),
    (r"pixel_decoder\.lateral\.conv\.weight$", PIX + "adapter_1.weight"),
    (r"pixel_decoder\.lateral\.norm\.(.+)$", PIX + r"adapter_1.norm.\1"),
    (r"pixel_decoder\.output\.conv\.weight$", PIX + "layer_1.weight"),
    (r"pixel_decoder\.output\.norm\.(.+)$", PIX + r"layer_1.norm.\1"),
    (r"pixel_decoder\.((?:input_proj|mask_features)\..+)$", PIX + r"\1"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.attn\.(.+)$", PRED + r"transformer_cross_attention_layers.\1.multihead_attn.\2"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.norm\.(.+)$", PRED + r"transformer_cross_attention_layers.\1.norm.\2"),
    (r"decoder\.layers\.(\d+)\.self_attn\.attn\.(.+)$", PRED + r"transformer_self_attention_layers.\1.self_attn.\2"),
    (r"decoder\.layers\.(\d+)\.self_attn\.norm\.(.+)$", PRED + r"transformer_self_attention_layers.\1.norm.\2"),
    (r"decoder\.layers\.(\d+)\.ffn\.(.+)$", PRED + r"transformer_ffn_layers.\1.\2"),
    (r"decoder\.norm\.(.+)$", PRED + r"decoder_norm.\1"),
    (r"decoder\.pool_proj\.(.+)$", PRED + r"_mask_pooling_proj.\1"),
    (r"decoder\.((?:query_feat|query_embed|level_embed|mask_embed|class_embed)\..+|logit_scale)$", PRED + r"\1"),
    (r"void_embedding\.weight$", "void_embedding.weight"),
]


def unwrap(state_dict: dict) -> dict:
    """A detectron2 checkpoint keeps the weights under ``model``."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        return state_dict["model"]
    return state_dict


def detect(state_dict: dict) -> bool:
    """True for a published FC-CLIP state dict (or a checkpoint wrapping one)."""
    sd = unwrap(state_dict)
    return (any(k.startswith(PRED + "_mask_pooling_proj.") for k in sd)
            and any(k.startswith(CLIP) for k in sd) and "void_embedding.weight" in sd)


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        if re.match(pattern, key):
            return re.sub(pattern, template, key)
    return None


def _listing(what: str, keys: list[str], limit: int = 12) -> str:
    if not keys:
        return ""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"; {what} ({len(keys)}): " + ", ".join(keys[:limit]) + more


def to_ours(state_dict: dict) -> dict:
    """Published key names -> ours. Raises KeyError naming keys it cannot place and
    ValueError for a ResNet-CLIP checkpoint or an unexpected ``criterion.empty_weight``."""
    sd = unwrap(state_dict)
    if any(k.startswith(CLIP + "visual.attnpool.") for k in sd):
        raise ValueError("this is a ResNet-CLIP FC-CLIP checkpoint; vocabseg implements the ConvNeXt variants")
    out, unknown = {}, []
    for k, v in sd.items():
        if k.startswith(CLIP):
            out["clip." + k[len(CLIP):]] = v
        elif k == "criterion.empty_weight":
            if v.ndim != 1 or not torch.all(v[:-1] == 1) or abs(float(v[-1]) - EOS_COEF) > 1e-6:
                raise ValueError(f"criterion.empty_weight should be ones with {EOS_COEF} last")
        else:
            name = _rename(k, _RULES)
            if name is None:
                unknown.append(k)
            else:
                out[name] = v
    if unknown:
        raise KeyError("unexpected keys in the FC-CLIP checkpoint" + _listing("unknown", unknown))
    return out


def from_ours(state_dict: dict, text_tower: bool = False, num_train_classes: int = TRAIN_CLASSES) -> dict:
    """Our key names -> the published layout (``criterion.empty_weight`` rebuilt).
    Like the release, the text transformer is left out unless ``text_tower``."""
    out, unknown = {}, []
    for k, v in state_dict.items():
        if k.startswith("clip."):
            rest = k[len("clip."):]
            if text_tower or not rest.startswith(TEXT_ABSENT):
                out[CLIP + rest] = v
            continue
        name = _rename(k, _INVERSE)
        if name is None:
            unknown.append(k)
        else:
            out[name] = v
    if unknown:
        raise KeyError("keys with no published name" + _listing("unknown", unknown))
    weight = torch.ones(num_train_classes + 1)
    weight[-1] = EOS_COEF
    out["criterion.empty_weight"] = weight
    return out


def load_into(model, state_dict: dict, clip_state_dict: dict | None = None) -> dict:
    """Load a published state dict into ``model``. Text-tower keys the file lacks
    come from ``clip_state_dict`` (open_clip names); any other missing,
    unexpected or mis-shaped key is an error naming them. Returns
    dict(filled=[our keys taken from CLIP])."""
    ours = to_ours(state_dict)
    expected = model.state_dict()
    absent = [k for k in expected if k not in ours]
    text_absent = [k for k in absent if k.startswith("clip.") and k[len("clip."):].startswith(TEXT_KEYS)]
    filled = []
    if text_absent and clip_state_dict is not None:
        clip = unwrap(clip_state_dict)
        filled = [k for k in text_absent if k[len("clip."):] in clip]
        ours.update({k: clip[k[len("clip."):]] for k in filled})
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    shapes = [f"{k}: file {tuple(ours[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in ours and tuple(ours[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        hint = (" (the text tower is missing: pass the CLIP weights)"
                if any(k in text_absent for k in missing) else "")
        raise ValueError("FC-CLIP checkpoint does not fit the model" + hint + _listing("missing", missing)
                         + _listing("unexpected", unexpected) + _listing("wrong shape", shapes))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()}, strict=True)
    model.reset_text_cache()
    return {"filled": filled}


def load_published(model, path: str | os.PathLike, clip_weights: str | None = None) -> dict:
    """Load ``fcclip_cocopan.pth`` (as distributed) into ``model``. The text
    tower the file lacks comes from open_clip: ``clip_weights`` (a tag or a
    local file), default the model's published CLIP tag."""
    sd = unwrap(torch.load(path, map_location="cpu", weights_only=True))
    if not detect(sd):
        raise ValueError(f"{path} is not a published FC-CLIP checkpoint "
                         f"(no {PRED}_mask_pooling_proj.* / {CLIP}* / void_embedding keys)")
    ours = to_ours(sd)
    clip_sd = None
    if any(k not in ours for k in model.state_dict() if k.startswith("clip.")):
        from ..backbones.clip import create_clip
        from ..models.fcclip import CLIP_VARIANTS
        tag = clip_weights or CLIP_VARIANTS.get(model.clip_arch)
        if tag is None:
            raise ValueError(f"{path} lacks the text tower and {model.clip_arch} has no default CLIP "
                             f"weights: pass clip_weights (an open_clip tag or file)")
        clip_sd = create_clip(model.clip_arch, tag)[0].state_dict()
    return load_into(model, sd, clip_sd)
