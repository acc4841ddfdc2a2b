"""Importing the parts of vocabseg that may not exist in a build (a model family,
a converter, a command): missing means "not built", any other import error is a bug."""
from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when exactly that module does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise
