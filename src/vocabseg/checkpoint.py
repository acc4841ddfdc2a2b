"""vocabseg's own checkpoints: a folder with ``model.safetensors`` (the state dict)
and ``config.json`` (the preset and the build overrides, ``model.config``).

    save_checkpoint(model, "runs/my-san")      # -> runs/my-san/{model.safetensors,config.json}
    model = vocabseg.registry.load_checkpoint("runs/my-san")

Reading one checks everything a broken or foreign folder can get wrong (torn
files, invalid JSON, weights of another model, wrong shapes, NaN) and says what,
in one line naming the folder (``CheckpointError``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .backbones.clip import clip_activation
from .convert import mismatch
from .errors import CheckpointError
from .files import atomic_write

FORMAT = "vocabseg"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def folder_of(path: str | os.PathLike) -> Path:
    """The checkpoint folder of ``path`` (the folder itself, or its ``model.safetensors`` / ``config.json``)."""
    p = Path(path)
    return p.parent if p.name in (WEIGHTS, CONFIG) and not p.is_dir() else p


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A vocabseg checkpoint folder, or its ``model.safetensors`` / ``config.json``."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    try:
        return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() and \
            (p.is_dir() or p.name in (WEIGHTS, CONFIG))
    except OSError:      # a symlink loop, a name too long
        return False


def save_checkpoint(model, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model`` (its weights and ``model.config``) into folder ``path`` atomically."""
    from safetensors.torch import save_model
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model.config)
    if "preset" not in config:
        raise ValueError("model.config has no 'preset': build models through vocabseg.registry presets")
    # safetensors writes by file name: into the temporary file, which atomic_write then renames
    atomic_write(folder / WEIGHTS, lambda f: save_model(model, f.name, metadata={"format": FORMAT}))
    meta = {"format": FORMAT, "version": 1, "config": config, **(extra or {})}
    act = clip_activation(model)
    if act:      # not a weight: OpenAI CLIP's QuickGELU would otherwise come back as the arch's GELU
        meta["clip_activation"] = act
    atomic_write(folder / CONFIG, json.dumps(meta, indent=1, default=str))
    return folder


def read_config(path: str | os.PathLike) -> dict:
    """The folder's ``config.json``: {"format": "vocabseg", "config": {"preset": name, ...}, ...}.
    Fields this version does not know (a newer vocabseg's) are kept and ignored."""
    folder = folder_of(path)
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a vocabseg checkpoint folder: no {CONFIG}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} cannot be read ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} is not valid JSON "
                              f"(line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} is not a vocabseg checkpoint config "
                              f'(expected an object with "format": "{FORMAT}" and a "config" object)')
    preset = meta["config"].get("preset")
    if not isinstance(preset, str) or not preset:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} names no preset (config.preset)")
    return meta


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The folder's ``model.safetensors`` as a CPU state dict (a torn or foreign file is a CheckpointError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    file = folder_of(path) / WEIGHTS
    try:
        return load_file(str(file), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {file.parent} has no {WEIGHTS}") from None
    except (SafetensorError, OSError, ValueError) as e:
        why = "truncated" if "incomplete" in str(e) or "too small" in str(e) else "not a valid safetensors file"
        raise CheckpointError(f"checkpoint {file.parent}: {WEIGHTS} is {why}") from None


def load_weights(model, path: str | os.PathLike) -> None:
    """Load the checkpoint folder's ``model.safetensors`` into ``model`` strictly: missing,
    unexpected or mis-shaped keys, and NaN values, are an error naming them."""
    folder = folder_of(path)
    sd = read_weights(folder)
    name = model.config.get("preset", type(model).__name__)
    problem = mismatch(model.state_dict(), sd)
    if problem:
        raise CheckpointError(f"checkpoint {folder} does not fit {name} (weights of another model or options?)"
                              + problem)
    nan = [k for k, v in sd.items() if v.is_floating_point() and torch.isnan(v).any()]
    if nan:
        raise CheckpointError(f"checkpoint {folder}: {len(nan)} tensor(s) hold NaN (e.g. {nan[0]}); "
                              f"it came from a diverged or damaged run")
    model.load_state_dict(sd)
