"""Flatten an ``encode_image`` output (tensors, dicts, dataclasses, lists / tuples,
plain values) into a tuple of tensors and a JSON description, and back.

A description node is one of ``{"tensor": i}``, ``{"value": v}`` (a constant),
``{"input": k}`` (side ``k`` of the input's (H, W)), ``{"dict": {...}}``,
``{"list": [...]}``, ``{"tuple": [...]}``, ``{"dataclass": "module:Name", "fields": {...}}``.
"""
from __future__ import annotations

import importlib
from dataclasses import fields, is_dataclass

import torch


def flatten(out, tensors: list) -> dict:
    """The description of ``out``; its tensors are appended to ``tensors``."""
    if isinstance(out, torch.Tensor):
        tensors.append(out)
        return {"tensor": len(tensors) - 1}
    if isinstance(out, dict):
        return {"dict": {str(k): flatten(v, tensors) for k, v in out.items()}}
    if is_dataclass(out) and not isinstance(out, type):
        cls = type(out)
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: flatten(getattr(out, f.name), tensors) for f in fields(out)}}
    if isinstance(out, (list, tuple)):
        return {type(out).__name__ if type(out) in (list, tuple) else "tuple": [flatten(v, tensors) for v in out]}
    if out is None or isinstance(out, (bool, int, float, str)):
        return {"value": out}
    raise TypeError(f"encode_image returned a {type(out).__name__}, which cannot be exported")


def mark_input_sides(spec: dict, size: tuple[int, int]) -> dict:
    """``spec`` with every constant (H, W) pair equal to the input ``size`` replaced by input sides."""
    if "tuple" in spec or "list" in spec:
        kind = "tuple" if "tuple" in spec else "list"
        items = spec[kind]
        if len(items) == 2 and [i.get("value") for i in items] == list(size) and size[0] != size[1]:
            return {kind: [{"input": 0}, {"input": 1}]}
        return {kind: [mark_input_sides(i, size) for i in items]}
    if "dict" in spec:
        return {"dict": {k: mark_input_sides(v, size) for k, v in spec["dict"].items()}}
    if "fields" in spec:
        return {**spec, "fields": {k: mark_input_sides(v, size) for k, v in spec["fields"].items()}}
    return spec


def unflatten(spec: dict, tensors, size: tuple[int, int]):
    """The structure ``spec`` describes, with ``tensors`` and the input ``size`` filled in."""
    if "tensor" in spec:
        return tensors[spec["tensor"]]
    if "value" in spec:
        return spec["value"]
    if "input" in spec:
        return int(size[spec["input"]])
    if "dict" in spec:
        return {k: unflatten(v, tensors, size) for k, v in spec["dict"].items()}
    if "list" in spec:
        return [unflatten(v, tensors, size) for v in spec["list"]]
    if "tuple" in spec:
        return tuple(unflatten(v, tensors, size) for v in spec["tuple"])
    module, name = spec["dataclass"].split(":")
    cls = importlib.import_module(module)
    for part in name.split("."):       # a class nested in another
        cls = getattr(cls, part)
    return cls(**{k: unflatten(v, tensors, size) for k, v in spec["fields"].items()})
