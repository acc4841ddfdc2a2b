"""Optimiser construction and gradient clipping for the training engine.

Parameter groups come from ``model.param_groups(cfg)`` (the whole config; the
model sets requires_grad False on what its recipe freezes and gives per-group
``lr`` / ``weight_decay``; a module that is not a ``SegModel``: ``vocabseg.model.default_param_groups``). ``optim.freeze``
name prefixes are frozen on top. Groups without ``lr`` / ``weight_decay`` take
``optim.lr`` / ``optim.weight_decay``; frozen parameters and empty groups are
dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...model import SegModel, default_param_groups


def param_groups(model: nn.Module, cfg: dict) -> list[dict]:
    """The optimiser's parameter groups for ``model`` under config ``cfg``."""
    optim = cfg["optim"]
    names = {id(p): n for n, p in model.named_parameters()}
    freeze = tuple(optim.get("freeze") or ())
    if freeze:
        hit = set()
        for n, p in model.named_parameters():
            for prefix in freeze:
                if n.startswith(prefix):
                    p.requires_grad_(False)
                    hit.add(prefix)
        missing = [p for p in freeze if p not in hit]
        if missing:
            raise ValueError(f"optim.freeze prefixes {missing} match no parameter name")
    groups = model.param_groups(cfg) if isinstance(model, SegModel) else default_param_groups(model, cfg)
    out, seen = [], set()
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"parameter {names.get(id(p), '?')} is in two parameter groups")
            seen.add(id(p))
        if not params:
            continue
        g = dict(g, params=params)
        g.setdefault("lr", float(optim["lr"]))
        g.setdefault("weight_decay", float(optim["weight_decay"]))
        out.append(g)
    if not out:
        raise ValueError("no trainable parameter: every parameter is frozen")
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left:
        raise ValueError(f"trainable parameters missing from the parameter groups: {left[:5]}")
    return out


def build_optimizer(groups: list[dict], optim: dict) -> torch.optim.Optimizer:
    name = optim["name"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                 weight_decay=optim["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                weight_decay=optim["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
    raise ValueError(f"unknown optimiser {name!r}; use adamw, adam or sgd")


def clip_gradients(optimizer: torch.optim.Optimizer, max_value, kind: str = "full_model") -> float | None:
    """detectron2's gradient clipping: ``full_model`` clips the norm of all gradients
    together (returns it), ``norm`` each parameter's gradient norm, ``value`` each
    gradient element. ``max_value`` None: no clipping (the full norm is still returned)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return None
    if kind == "full_model":
        limit = float("inf") if max_value is None else float(max_value)
        return float(torch.nn.utils.clip_grad_norm_(params, limit))
    if max_value is None:
        return None
    for p in params:
        if kind == "norm":
            torch.nn.utils.clip_grad_norm_([p], float(max_value))
        elif kind == "value":
            torch.nn.utils.clip_grad_value_([p], float(max_value))
        else:
            raise ValueError(f"unknown clip_grad_type {kind!r}; use full_model, norm or value")
    return None
