"""vocabseg's own checkpoints: a folder with ``model.safetensors`` (the state dict)
and ``config.json`` (the preset and the build overrides, ``model.config``).

    save_checkpoint(model, "runs/my-san")      # -> runs/my-san/{model.safetensors,config.json}
    model = load_checkpoint("runs/my-san")
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
    config = dict(getattr(model, "config", {}) or {})
    if "preset" not in config:
        raise ValueError("model.config has no 'preset': build models through vocabseg.hub presets")
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


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the preset named in ``config.json`` (random init) and load the weights
    strictly: any missing or unexpected key is an error."""
    from safetensors.torch import load_model
    from .hub import get_spec
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    config = dict(read_config(folder)["config"])
    spec = get_spec(config.pop("preset"))
    config["clip_weights"] = None      # every weight comes from the file
    model = spec.build(**config)
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not fit {spec.name}: missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    model.config = {"preset": spec.name, **{k: v for k, v in read_config(folder)["config"].items() if k != "preset"}}
    if hasattr(model, "reset_text_cache"):
        model.reset_text_cache()
    return model.to(device).eval()
