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

from ...errors import CheckpointError
from ...files import atomic_write
from ...torchfile import load_torch_file


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
    found = candidates(output_dir)
    return found[0] if found else None


def candidates(output_dir) -> list[Path]:
    """A run folder's checkpoints, newest first: the one ``last`` points at, then
    ``iter_*.pt`` by iteration."""
    folder = checkpoint_dir(output_dir)
    found = sorted(folder.glob("iter_*.pt"), reverse=True)
    pointer = folder / "last"
    try:
        named = folder / pointer.read_text().strip() if pointer.is_file() else None
    except (OSError, UnicodeDecodeError):
        named = None
    if named is not None and named.parent == folder and named.is_file():
        found = [named] + [p for p in found if p != named]
    return found


def load_training_state(path: str | os.PathLike) -> dict:
    """The training state in checkpoint file ``path``, or the newest intact one of run
    folder ``path``. A damaged or refused file is skipped in favour of the next older one:
    the state's ``skipped`` lists them with the reason (one line each). Raises
    ``CheckpointError`` naming the file(s) and why when nothing can be resumed."""
    path = Path(path)
    if not path.is_dir():
        return {**read_training_state(path), "skipped": []}
    found = candidates(path) or candidates(path.parent)
    if not found:
        raise FileNotFoundError(f"nothing to resume: no checkpoint (checkpoints/iter_*.pt) under {path}")
    skipped = []
    for file in found:
        try:
            state = read_training_state(file)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        state["skipped"] = skipped
        return state
    raise CheckpointError(f"nothing to resume under {path}: no checkpoint is intact ({'; '.join(skipped)})")


def read_training_state(path: Path) -> dict:
    """One checkpoint file's state (``load_torch_file``: weights only, one-line errors)."""
    state = load_torch_file(path)
    missing = [k for k in ("iteration", "model", "optimizer", "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot load {path}: it is not a vocabseg training checkpoint (no {missing[0]!r})")
    state["path"] = str(path)
    return state
