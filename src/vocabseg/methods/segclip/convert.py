"""SegCLIP's published checkpoint (``segclip.bin``, a plain state_dict) <-> ours.

Published layout (ArrowLuo/SegCLIP)                      ours (``methods.segclip.model.SegCLIP``)
  clip.<text tower, visual stem, ln_post, proj, logit_scale>  clip.<same>   (open_clip = OpenAI names)
  clip.visual.transformer.layers0.{i}.*                 clip.visual.transformer.resblocks.{i}.*
  clip.visual.transformer.layers2.{j}.*                 clip.visual.transformer.resblocks.{split+j}.*
  clip.visual.transformer.layers_mae2.{j}.*             mae_blocks.{j}.*
  clip.visual.transformer.semantic_layer2.*             group.*
  clip.visual.transformer.reconstruct_layer2.rec_proj_a.a_fc.*   reconstruct.*
  vis_mae_decoder.*                                     decoder.*

``split`` is the number of ``layers0`` blocks (10). Keys of the CLIP part that
a file lacks are filled from an OpenAI / open_clip CLIP state dict
(``clip_state_dict``, names like ``visual.conv1.weight``), as the published
loader does; any other missing or unexpected key is an error.
"""
from __future__ import annotations

import re
import warnings

import torch

from ...backbones.clip import create_clip
from ...convert import block_count, load_file, mismatch, unwrap

_VT = "clip.visual.transformer."
_RENAMES = [  # (published prefix, our prefix) for the modules that are not indexed blocks
    (_VT + "semantic_layer2.", "group."),
    (_VT + "reconstruct_layer2.rec_proj_a.a_fc.", "reconstruct."),
    ("vis_mae_decoder.", "decoder."),
]
_CLIP_META = ("input_resolution", "context_length", "vocab_size")
# Parts only the MAE reconstruction loss uses (ours, published): a file without them still segments
_TRAINING_PARTS = (("decoder.", "vis_mae_decoder"), ("mae_blocks.", "layers_mae2"),
                   ("reconstruct.", "reconstruct_layer2"))
TRAINING_ONLY = tuple(p for p, _ in _TRAINING_PARTS)


def detect(state_dict: dict) -> bool:
    """True for the published SegCLIP layout."""
    return any(k.startswith(_VT + "semantic_layer2.") for k in unwrap(state_dict))


def to_ours(state_dict: dict) -> dict:
    """Published names -> ours (tensors shared, not copied)."""
    sd = unwrap(state_dict)
    split = block_count(sd, _VT + "layers0.")
    out = {}
    for k, v in sd.items():
        m = re.match(re.escape(_VT) + r"(layers0|layers2|layers_mae2)\.(\d+)\.(.*)", k)
        if m:
            kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "layers_mae2":
                out[f"mae_blocks.{i}.{rest}"] = v
            else:
                out[f"{_VT}resblocks.{i + (split if kind == 'layers2' else 0)}.{rest}"] = v
            continue
        for old, new in _RENAMES:
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            out[k] = v
    return out


def from_ours(state_dict: dict) -> dict:
    """Ours -> published names. ``split`` = visual blocks minus MAE blocks."""
    total = block_count(state_dict, _VT + "resblocks.")
    split = total - block_count(state_dict, "mae_blocks.")
    out = {}
    for k, v in state_dict.items():
        m = re.match(re.escape(_VT) + r"resblocks\.(\d+)\.(.*)", k)
        m2 = re.match(r"mae_blocks\.(\d+)\.(.*)", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            out[f"{_VT}layers0.{i}.{rest}" if i < split else f"{_VT}layers2.{i - split}.{rest}"] = v
        elif m2:
            out[f"{_VT}layers_mae2.{m2.group(1)}.{m2.group(2)}"] = v
        else:
            for old, new in _RENAMES:
                if k.startswith(new):
                    out[old + k[len(new):]] = v
                    break
            else:
                out[k] = v
    return out


def fill_from_clip(ours: dict, expected: dict, clip_state_dict: dict | None) -> tuple[dict, list[str]]:
    """Add the ``clip.*`` keys of ``expected`` that ``ours`` lacks from a CLIP state dict
    (OpenAI / open_clip names). Returns (state dict, filled keys)."""
    missing = [k for k in expected if k not in ours and k.startswith("clip.")]
    if not missing or clip_state_dict is None:
        return ours, []
    clip = {f"clip.{k}": v for k, v in unwrap(clip_state_dict).items() if k not in _CLIP_META}
    filled = [k for k in missing if k in clip]
    return {**ours, **{k: clip[k] for k in filled}}, filled


def load_into(model, state_dict: dict, clip_state_dict: dict | None = None) -> dict:
    """Load a published (detected) or our-layout state dict into ``model``.

    Missing ``clip.*`` keys are taken from ``clip_state_dict`` when given. Raises
    ValueError naming every missing / unexpected / mis-shaped key. Returns a
    report dict(filled=[...], fresh=[...]): ``fresh`` are the training-only keys
    (MAE decoder, its blocks, the reconstruction layer) a file may lack: they keep
    the model's initial values, with one warning.
    """
    sd = unwrap(state_dict)
    sd = to_ours(sd) if detect(sd) else dict(sd)
    expected = model.state_dict()
    sd, filled = fill_from_clip(sd, expected, clip_state_dict)
    fresh = sorted(k for k in expected if k not in sd and k.startswith(TRAINING_ONLY))
    if fresh and any(k in sd for k in expected if k.startswith("group.")):   # a SegCLIP file for inference
        warnings.warn(f"the SegCLIP checkpoint has no {', '.join(_parts(fresh))} (used in training only): "
                      f"loaded for inference; training from it starts those parts fresh", stacklevel=3)
        sd = {**sd, **{k: expected[k] for k in fresh}}
    problems = mismatch(expected, sd)
    if problems:
        hint = (" (CLIP keys are missing: pass the OpenAI CLIP weights as clip_state_dict)"
                if any(k.startswith("clip.") and k not in sd for k in expected) and clip_state_dict is None else "")
        raise ValueError("SegCLIP checkpoint does not match the model" + hint + problems)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)
    return {"filled": filled, "fresh": fresh}


def _parts(keys: list[str]) -> list[str]:
    """Published names of the training-only parts among ``keys``."""
    return [name for prefix, name in _TRAINING_PARTS if any(k.startswith(prefix) for k in keys)]


def load_published(model, path: str, clip_state_dict: dict | None = None,
                   clip: tuple[str, str] = ("ViT-B-16", "openai"), clip_weights: str | None = None) -> dict:
    """Load ``segclip.bin`` (or our layout) from ``path``. When the file lacks CLIP
    keys and no ``clip_state_dict`` is given, the OpenAI CLIP weights ``clip``
    (open_clip arch, tag) are fetched through open_clip to fill them; ``clip_weights``
    (a tag or a local file) replaces the tag."""
    if clip_weights is not None:
        clip = (clip[0], clip_weights)
    sd = load_file(path)
    ours = to_ours(sd) if detect(sd) else sd
    lacks_clip = any(k.startswith("clip.") and k not in ours for k in model.state_dict())
    if lacks_clip and clip_state_dict is None:
        clip_state_dict = create_clip(*clip, quick_gelu=True)[0].state_dict()   # weights only: no activation guess
    return load_into(model, sd, clip_state_dict)
