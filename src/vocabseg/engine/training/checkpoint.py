"""Training checkpoints (the full state needed to resume; for a model-only
checkpoint to share or evaluate see ``vocabseg.checkpoint``).

A checkpoint is one ``torch.save`` file ``checkpoints/iter_<N>.pt`` holding
``iteration`` (updates done), ``model``, ``optimizer``, ``scaler``,
``schedule``, ``rng`` (one entry per process: torch CPU / CUDA, numpy and
python states), ``world_size`` and ``config``. Files are written with
``files.atomic_write`` (temporary name, fsync, rename), then ``checkpoints/last``
(a one-line text file) is replaced the same way to point at the newest.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ...files import atomic_write


def rng_state() -> dict:
    """This process's random states (torch CPU and every CUDA device, numpy, python),
    as tensors and plain numbers (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng():
    """Run a block (evaluation, a seeded transform) without disturbing the global
    random states: they are saved before and restored after."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save_training_state(output_dir, state: dict, keep: int = 2) -> Path:
    """Write ``state`` as ``checkpoints/iter_<iteration>.pt``, point ``last`` at it and
    keep the newest ``keep`` files (0: keep all)."""
    folder = checkpoint_dir(output_dir)
    path = atomic_write(folder / f"iter_{state['iteration']:08d}.pt", lambda f: torch.save(state, f))
    atomic_write(folder / "last", path.name + "\n")
    if keep > 0:
        for old in sorted(folder.glob("iter_*.pt"))[:-keep]:
            old.unlink()
    return path


def last_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    folder = checkpoint_dir(output_dir)
    pointer = folder / "last"
    if pointer.is_file():
        path = folder / pointer.read_text().strip()
        if path.is_file():
            return path
    found = sorted(folder.glob("iter_*.pt"))
    return found[-1] if found else None


def load_training_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        found = last_checkpoint(path) or last_checkpoint(path.parent)
        if found is None:
            raise FileNotFoundError(f"no training checkpoint (checkpoints/iter_*.pt) under {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("iteration", "model", "optimizer", "rng"):
        if key not in state:
            raise ValueError(f"{path} is not a vocabseg training checkpoint (no {key!r})")
    state["path"] = str(path)
    return state
