"""The model zoo and the weight policy.

Every method package lists its presets (``methods/<name>/presets.py``, specs
of ``vocabseg.spec.ModelSpec``); ``all_specs`` / ``get_spec`` find them by name
and ``build`` makes a model from a name or a folder with its weights, the same
way for the Python API, the command line, evaluation and training:

* a vocabseg checkpoint folder: the preset and options saved in it, its weights;
* a zoo name: the published checkpoint (downloaded on first use), or a file
  given as ``weights`` (a published file as distributed, read by the method's
  converter, or a vocabseg checkpoint); models without a published checkpoint
  (training-free) are built from CLIP weights (``clip_weights``: an open_clip
  tag or file, default the spec's);
* ``pretrained=False`` (training from scratch or from CLIP): the preset with
  ``clip_weights`` as given (None: random init), unless ``weights`` is given.
"""
from __future__ import annotations

import os

import torch

from .checkpoint import is_checkpoint, load_weights, read_config
from .errors import UnknownModel, UserError
from .hub import fetch_weights
from .methods import fcclip, san, segclip, trainingfree
from .spec import ModelSpec

DEFAULT_MODEL = "san-vit-b16"
METHODS = (trainingfree, san, fcclip, segclip)


def all_specs(include_test: bool = False) -> dict[str, ModelSpec]:
    """Preset name -> spec, in zoo order (tiny test presets only with ``include_test``)."""
    return {name: spec for method in METHODS for name, spec in method.PRESETS.items()
            if include_test or not spec.test_only}


def get_spec(name: str) -> ModelSpec:
    specs = all_specs(include_test=True)
    if name not in specs:
        shown = sorted(n for n, s in specs.items() if not s.test_only)
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(shown)}")
    return specs[name]


def spec_of(model) -> ModelSpec | None:
    """The spec of the preset ``model`` was built from (None for a model built by hand)."""
    name = model.config.get("preset")
    specs = all_specs(include_test=True)
    return specs.get(name) if name else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", **options):
    """The preset named in a vocabseg checkpoint folder, built with the options saved
    there (``options`` on top) and the folder's weights loaded strictly."""
    saved = dict(read_config(path)["config"])
    spec = get_spec(saved.pop("preset"))
    model = spec.build(**{**saved, **options, "clip_weights": None})   # every weight comes from the file
    model.config = {"preset": spec.name, **saved, **options}
    load_weights(model, path)
    return model.to(device).eval()


def build(name: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
          clip_weights: str | None = None, device: str | torch.device = "cpu", pretrained: bool = True,
          **options):
    """A ``SegModel`` on ``device`` (eval mode) from a zoo name (default ``san-vit-b16``)
    or a vocabseg checkpoint folder, following the weight policy above. ``options``
    are build overrides of the preset (a checkpoint folder: on top of its saved ones)."""
    target = str(name) if name is not None else DEFAULT_MODEL
    if weights is None and is_checkpoint(target):
        return load_checkpoint(target, device, **options)
    if os.path.exists(target) and not is_checkpoint(target):
        raise UserError(f"{target} is not a vocabseg checkpoint folder (model.safetensors + config.json); "
                        f"for a published file use --model NAME --weights {target}")
    spec = get_spec(target)
    if weights is not None:
        weights = str(weights)
        if is_checkpoint(weights):
            if not options and pretrained:
                return load_checkpoint(weights, device)
            model = _build(spec, None, options)
            load_weights(model, weights)
            return model.to(device).eval()
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file not found: {weights}")
    elif not pretrained:
        return _build(spec, clip_weights, options).to(device).eval()
    elif spec.weights is None:      # built from CLIP alone (training-free) or a test preset
        tag = clip_weights if clip_weights is not None else (spec.clip[1] if spec.clip else None)
        return _build(spec, tag, options).to(device).eval()
    else:
        weights = str(fetch_weights(spec))
    if spec.converter is None:      # a method without a published layout: the file holds CLIP weights
        return _build(spec, weights, options).to(device).eval()
    model = _build(spec, None, options)
    extra = {"clip_weights": clip_weights} if clip_weights is not None and pretrained else {}
    try:
        spec.converter(model, weights, **extra)
    except (KeyError, ValueError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise UserError(f"{weights} cannot be loaded as {spec.name}: {msg}") from None
    return model.to(device).eval()


def _build(spec: ModelSpec, clip_weights, options: dict):
    try:
        return spec.build(clip_weights=clip_weights, **options)
    except TypeError as e:
        raise UserError(f"model options {sorted(options)} do not fit preset {spec.name}: {e}") from None
