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

import difflib
import os
from pathlib import Path

import torch

from .backbones.clip import set_clip_activation
from .checkpoint import CONFIG, WEIGHTS, folder_of, is_checkpoint, load_weights, read_config
from .errors import CheckpointError, UnknownModel, UserError, WeightsNotFound
from .hub import fetch_weights
from .methods import catseg, fcclip, san, segclip, trainingfree
from .spec import ModelSpec

DEFAULT_MODEL = "san-vit-b16"
METHODS = (trainingfree, san, fcclip, segclip, catseg)


def all_specs(include_test: bool = False) -> dict[str, ModelSpec]:
    """Preset name -> spec, in zoo order (tiny test presets only with ``include_test``)."""
    return {name: spec for method in METHODS for name, spec in method.PRESETS.items()
            if include_test or not spec.test_only}


def get_spec(name: str) -> ModelSpec:
    specs = all_specs(include_test=True)
    if name not in specs:
        shown = sorted(n for n, s in specs.items() if not s.test_only)
        close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.75)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UnknownModel(f"unknown model {name!r}; {hint}available: {', '.join(shown)}")
    return specs[name]


def spec_of(model) -> ModelSpec | None:
    """The spec of the preset ``model`` was built from (None for a model built by hand)."""
    name = model.config.get("preset")
    specs = all_specs(include_test=True)
    return specs.get(name) if name else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", **options):
    """The preset named in a vocabseg checkpoint folder, built with the options saved
    there (``options`` on top) and the folder's weights loaded strictly."""
    folder = folder_of(path)
    meta = read_config(folder)
    saved = dict(meta["config"])
    try:
        spec = get_spec(saved.pop("preset"))
    except UnknownModel as e:
        raise CheckpointError(f"checkpoint {folder} is of an {e}") from None
    kwargs = {k: v for k, v in {**saved, **options}.items() if k != "clip_weights"}
    model = _build(spec, None, kwargs, folder)      # every weight comes from the file
    model.config = {"preset": spec.name, **saved, **options}
    load_saved(model, folder, meta)
    return model.to(device).eval()


def load_saved(model, folder, meta: dict) -> None:
    """The checkpoint's weights and its CLIP activation (not a weight) into ``model``."""
    if meta.get("clip_activation") in ("quick_gelu", "gelu"):
        set_clip_activation(model, meta["clip_activation"])
    load_weights(model, folder)


def build(name: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
          clip_weights: str | None = None, device: str | torch.device = "cpu", pretrained: bool = True,
          **options):
    """A ``SegModel`` on ``device`` (eval mode) from a zoo name (default ``san-vit-b16``)
    or a vocabseg checkpoint folder, following the weight policy above. ``options``
    are build overrides of the preset (a checkpoint folder: on top of its saved ones)."""
    target = str(name) if name is not None else DEFAULT_MODEL
    zoo_name = target in all_specs(include_test=True)      # a zoo name wins over a same-named local folder
    if not zoo_name and is_checkpoint(target):
        if weights is not None:
            raise UserError(f"{target} is a checkpoint folder with its own weights: drop --weights {weights}")
        return load_checkpoint(target, device, **options)
    if not zoo_name and (os.path.lexists(target) or os.sep in target or target.startswith(".")):
        raise UserError(not_a_checkpoint(target))
    spec = get_spec(target)
    if weights is not None:
        weights = str(weights)
        if is_checkpoint(weights):
            saved = read_config(weights)["config"]["preset"]
            if name is not None and saved != spec.name:
                raise UserError(f"--model {spec.name} disagrees with checkpoint {folder_of(weights)}, which holds "
                                f"{saved}: drop --model (the checkpoint names its model) or pass its weights")
            spec = get_spec(saved)
            if not options and pretrained:
                return load_checkpoint(weights, device)
            model = _build(spec, None, options)
            load_saved(model, folder_of(weights), read_config(weights))
            return model.to(device).eval()
        if os.path.isdir(weights):
            raise UserError(not_a_checkpoint(weights))
        if not os.path.isfile(weights):
            raise WeightsNotFound(f"weights file not found: {weights}")
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
    except CheckpointError:
        raise
    except (KeyError, ValueError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise UserError(f"{weights} cannot be loaded as {spec.name}: {msg}") from None
    return model.to(device).eval()


def not_a_checkpoint(path: str) -> str:
    """Why ``path`` (which is not a zoo name) cannot be loaded as a model."""
    p = Path(path)
    if not os.path.lexists(p):
        return f"{path} does not exist (a model is a zoo name, see `vocabseg models`, or a checkpoint folder)"
    try:
        os.stat(p)
        missing = [n for n in (CONFIG, WEIGHTS) if not (p / n).is_file()]
    except OSError as e:       # a symlink loop, a name too long, no permission
        return f"{path} cannot be read ({os.strerror(e.errno) if e.errno else type(e).__name__})"
    if p.is_dir() and len(missing) < 2:
        return f"checkpoint folder {path} is incomplete: no {missing[0]}"
    return (f"{path} is not a vocabseg checkpoint folder (model.safetensors + config.json); "
            f"for a published file use --model NAME --weights {path}")


def _build(spec: ModelSpec, clip_weights, options: dict, folder=None):
    """``spec.build`` with ``options``; options it does not take are one line (naming ``folder``
    when they were read from a checkpoint)."""
    try:
        return spec.build(clip_weights=clip_weights, **options)
    except (TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        where = f"checkpoint {folder}: its options" if folder else "model options"
        raise CheckpointError(f"{where} {sorted(options)} do not fit preset {spec.name}: {e}") from None
