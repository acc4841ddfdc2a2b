"""Training configs: YAML files in ``configs/`` with six sections.

    model:    preset (zoo name), clip_weights, weights, + the preset's build options
    data:     unseen (classes left out of training, evaluated), train (source or list of sources; a string NAME is {dataset: NAME, split: train}, e.g.
              folder:PATH or coco:FILE.json), root, vocabulary, workers,
              transform (options of the model's train_transform), + other model keys
    optim:    name, lr, weight_decay, betas, eps, momentum, clip_grad_norm, clip_grad_type,
              freeze, + options of the model's param_groups (e.g. lower_lr)
    schedule: name, iterations | epochs, power, milestones, gamma, warmup_iters |
              warmup_fraction, warmup_factor
    train:    batch_size (global), accumulate (micro-steps per iteration), activation_checkpointing, precision, checkpoint_every, keep_checkpoints,
              log_every, eval_every, seed, output_dir, tensorboard, find_unused_parameters
    eval:     datasets, split, root, limit, batch_size, templates, vocab_convention, protocol

``load_config(path, overrides)`` reads a file, applies ``key=value`` overrides
(``optim.lr=1e-4``, values parsed as YAML), fills defaults and checks every
engine-level key; a mistake raises ``ConfigError`` naming the key and what was
expected. The model-specific keys are passed through to the model
(``model.train_transform(cfg)`` and ``model.param_groups(cfg)`` receive the
whole config dict). The README's training section documents each key.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from ...errors import ConfigError
from ..precision import PRECISIONS


NUM = (int, float)
# section -> key -> (accepted types, default); "open" sections pass unknown keys to the model
SCHEMA = {
    "model": ({"preset": (str, None), "clip_weights": ((str, type(None)), None), "weights": ((str, type(None)), None)},
              True),
    "data": ({"train": ((dict, list, str), None), "root": ((str, type(None)), None),
              "vocabulary": ((str, type(None)), None), "unseen": (list, []), "workers": (int, 2),
              "transform": (dict, {})}, True),
    "optim": ({"name": (str, "adamw"), "lr": (NUM, None), "weight_decay": (NUM, 0.0), "betas": (list, [0.9, 0.999]),
               "eps": (NUM, 1e-8), "momentum": (NUM, 0.9), "clip_grad_norm": ((int, float, type(None)), None),
               "clip_grad_type": (str, "full_model"), "freeze": (list, [])}, True),
    "schedule": ({"name": (str, "constant"), "iterations": ((int, type(None)), None),
                  "epochs": ((int, float, type(None)), None), "power": (NUM, 0.9), "milestones": (list, []),
                  "gamma": (NUM, 0.1), "warmup_iters": (int, 0), "warmup_fraction": (NUM, 0.0),
                  "warmup_factor": (NUM, 0.001)}, False),
    "train": ({"batch_size": (int, None), "precision": (str, "fp32"), "checkpoint_every": (int, 1000),
               "keep_checkpoints": (int, 2), "log_every": (int, 20), "eval_every": (int, 0), "seed": (int, 0),
               "output_dir": ((str, type(None)), None), "tensorboard": (bool, False),
               "find_unused_parameters": (bool, False), "accumulate": (int, 1),
               "activation_checkpointing": (bool, False)}, False),
    "eval": ({"datasets": (list, []), "split": (str, "val"), "root": ((str, type(None)), None),
              "limit": ((int, type(None)), None), "batch_size": (int, 4), "templates": ((str, type(None)), None),
              "vocab_convention": ((str, type(None)), "auto"), "protocol": (dict, {})}, False),
}
REQUIRED = {"model": ["preset"], "data": ["train"], "optim": ["lr"], "train": ["batch_size"]}
CHOICES = {("optim", "name"): ("adamw", "adam", "sgd"),
           ("optim", "clip_grad_type"): ("full_model", "norm", "value"),
           ("schedule", "name"): ("constant", "poly", "multistep", "warmup_cosine"),
           ("train", "precision"): tuple(PRECISIONS)}


class _Loader(yaml.SafeLoader):
    """YAML with 1e-4 read as a float (plain YAML 1.1 wants 1.0e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def parse_value(text: str):
    """A ``key=value`` value as YAML (numbers, lists, booleans, null, strings)."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    data = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections ({', '.join(SCHEMA)})")
    return data


def apply_overrides(cfg: dict, overrides) -> dict:
    """``["optim.lr=1e-4", "train.batch_size=8"]`` -> a new config with those values set."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[last] = parse_value(value)
    return cfg


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate(cfg: dict) -> dict:
    """Defaults filled in; raises ConfigError on an unknown section, an unknown key
    of a closed section, a missing required key, a wrong type or an unknown choice."""
    unknown = [s for s in cfg if s not in SCHEMA]
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(unknown)}; expected {', '.join(SCHEMA)}")
    out = {}
    for section, (keys, open_) in SCHEMA.items():
        given = cfg.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {section} must be a mapping, got {type(given).__name__}")
        extra = [k for k in given if k not in keys]
        if extra and not open_:
            raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in extra)}; "
                              f"{section} takes {', '.join(keys)}")
        sec = copy.deepcopy(given)
        for key, (types, default) in keys.items():
            if key not in sec or (sec[key] is None and default is not None and key not in ("vocab_convention",)):
                if key in REQUIRED.get(section, []):
                    raise ConfigError(f"{section}.{key} is required")
                sec[key] = copy.deepcopy(default)
                continue
            value = sec[key]
            if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
                raise ConfigError(f"{section}.{key} must be {_type_name(types)}, got {value!r}")
            if not isinstance(value, types):
                raise ConfigError(f"{section}.{key} must be {_type_name(types)}, got {value!r}")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}")
        out[section] = sec
    s, t = out["schedule"], out["train"]
    if (s["iterations"] is None) == (s["epochs"] is None):
        raise ConfigError("give exactly one of schedule.iterations and schedule.epochs")
    if s["name"] == "multistep" and not s["milestones"]:
        raise ConfigError("schedule.milestones (iterations) is required by the multistep schedule")
    if s["warmup_iters"] and s["warmup_fraction"]:
        raise ConfigError("give at most one of schedule.warmup_iters and schedule.warmup_fraction")
    for key in ("batch_size", "log_every", "accumulate"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t[key]}")
    if len(out["optim"]["betas"]) != 2:
        raise ConfigError(f"optim.betas must hold two numbers, got {out['optim']['betas']}")
    train = out["data"]["train"]
    if isinstance(train, str) or (isinstance(train, list) and any(isinstance(x, str) for x in train)):
        train = [{"dataset": x, "split": "train"} if isinstance(x, str) else x
                 for x in (train if isinstance(train, list) else [train])]
        out["data"]["train"] = train if len(train) > 1 else train[0]
    for src in (train if isinstance(train, list) else [train]):
        if not isinstance(src, dict) or not ("dataset" in src or "type" in src):
            raise ConfigError(f"each data.train source needs 'dataset' (a benchmark) or 'type' "
                              f"(webdataset, coco-captions), got {src!r}")
    return out


def load_config(path: str | Path, overrides=None) -> dict:
    """Read, override and validate a training config (see the module docstring)."""
    return validate(apply_overrides(read_yaml(path), overrides))
