"""vocabseg's own checkpoints: a folder with ``model.safetensors`` (the state dict)
and ``config.json`` (the preset and the build overrides, ``model.config``).

    save_checkpoint(model, "runs/my-san")      # -> runs/my-san/{model.safetensors,config.json}
    model = vocabseg.registry.load_checkpoint("runs/my-san")
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import atomic_write

FORMAT = "vocabseg"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A vocabseg checkpoint folder, or its ``model.safetensors`` / ``config.json``."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() and \
        (p.is_dir() or p.name in (WEIGHTS, CONFIG))


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
    atomic_write(folder / CONFIG, json.dumps(meta, indent=1, default=str))
    return folder


def read_config(path: str | os.PathLike) -> dict:
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta = json.loads((folder / CONFIG).read_text())
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{folder / CONFIG} is not a vocabseg checkpoint config")
    return meta


def load_weights(model, path: str | os.PathLike) -> None:
    """Load the checkpoint folder's ``model.safetensors`` into ``model`` strictly:
    any missing or unexpected key is an error naming them."""
    from safetensors.torch import load_model
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not fit {model.config.get('preset', type(model).__name__)}: "
                         f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
