"""Helpers shared by the published-checkpoint converters."""
from __future__ import annotations

import os
import re

import numpy as np
import torch

from .errors import CheckpointError
from .torchfile import load_torch_file


def unwrap(state_dict: dict) -> dict:
    """The weights of a loaded file: a detectron2 checkpoint keeps them under ``model``,
    some trainers under ``state_dict``."""
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def load_file(path: str | os.PathLike) -> dict:
    """A published checkpoint's state dict, loaded with ``weights_only=True`` (no code
    runs). Checkpoints converted by detectron2 tools may hold numpy arrays: those
    (and only those) are allowed too and turned into tensors."""
    obj = load_torch_file(path, _NUMPY_GLOBALS)
    sd = unwrap(obj) if isinstance(obj, dict) else None
    if sd is None:
        raise CheckpointError(f"cannot load {path}: it holds a {type(obj).__name__}, not a state dict")
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in sd.items()}


def _numpy_globals() -> list:
    """numpy's array reconstruction under both module names (numpy 1 pickles say
    ``numpy.core``, numpy 2 ones ``numpy._core``), arrays, dtypes."""
    from numpy._core.multiarray import _reconstruct
    out = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    out += [type(np.dtype(t)) for t in ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")]
    return out


_NUMPY_GLOBALS = _numpy_globals()


# open_clip text-tower keys (SAN's file keeps them under ov_classifier.; FC-CLIP's lacks the first three groups)
CLIP_TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
                  "logit_scale")
EOS_COEF = 0.1      # Mask2Former's no-object class weight: criterion.empty_weight is ones, then this


def wrong_empty_weight(v: torch.Tensor) -> bool:
    """True unless ``criterion.empty_weight`` is ones then ``EOS_COEF`` (a constant of training)."""
    return v.ndim != 1 or not torch.all(v[:-1] == 1) or abs(float(v[-1]) - EOS_COEF) > 1e-6


def empty_weight(num_classes: int) -> torch.Tensor:
    """``criterion.empty_weight`` of ``num_classes`` training classes."""
    weight = torch.ones(num_classes + 1)
    weight[-1] = EOS_COEF
    return weight


def block_count(keys, prefix: str) -> int:
    """1 + the largest block index i among keys ``<prefix><i>.*`` (0 if none)."""
    idx = [int(m.group(1)) for k in keys for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m]
    return max(idx) + 1 if idx else 0


def key_listing(what: str, keys: list[str], limit: int = 12) -> str:
    """``"; missing (3): a, b, c"`` for an error message ('' when there are no keys)."""
    if not keys:
        return ""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"; {what} ({len(keys)}): " + ", ".join(keys[:limit]) + more


class PrefixMap:
    """Renames keys by prefix in both directions. ``pairs`` is a list of
    (theirs, ours) prefixes in which ``{n}`` stands for a layer index; a
    key takes the first pair whose prefix it starts with (or equals), and
    keeps the rest of its name. ``forward`` / ``backward`` return None for a
    key no pair explains."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self._fwd = [self._compile(a, b) for a, b in pairs]
        self._bwd = [self._compile(b, a) for a, b in pairs]

    @staticmethod
    def _compile(src: str, dst: str):
        pattern = re.escape(src).replace(r"\{n\}", r"(?P<n>\d+)")
        return re.compile(pattern + (r"(?P<rest>.*)$" if src.endswith(".") else r"(?P<rest>)$")), dst

    @staticmethod
    def _apply(table, key: str) -> str | None:
        for pattern, dst in table:
            m = pattern.match(key)
            if m:
                return dst.replace("{n}", m.groupdict().get("n") or "") + m.group("rest")
        return None

    def forward(self, key: str) -> str | None:
        return self._apply(self._fwd, key)

    def backward(self, key: str) -> str | None:
        return self._apply(self._bwd, key)

    def rename(self, state_dict: dict, backward: bool = False) -> tuple[dict, list[str]]:
        """(renamed state dict, keys no pair explains)."""
        out, unknown = {}, []
        for k, v in state_dict.items():
            name = self.backward(k) if backward else self.forward(k)
            if name is None:
                unknown.append(k)
            else:
                out[name] = v
        return out, unknown


def mismatch(expected: dict, given: dict) -> str:
    """'' when ``given`` has exactly the keys and shapes of ``expected`` (a model's
    state dict), else the missing / unexpected / mis-shaped keys, listed."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return (key_listing("missing", missing) + key_listing("unexpected", unexpected)
            + key_listing("wrong shape", shapes))
