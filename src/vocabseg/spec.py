"""How a method declares its zoo entries: one ``ModelSpec`` per preset, as data.

A method package (``vocabseg.methods.<name>``) lists ``PRESETS`` in its
``presets.py``: each spec names its builder, where the published weights come
from, and the facts the engine needs about the method (its benchmark
class-name convention, its converter of published files, whether CLIP weights
come separately, the vocabularies its speed benchmark uses, its published
numbers). ``vocabseg.registry`` collects them and owns the weight policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class WeightSource:
    """A published weight file: on the Hugging Face Hub (``repo_id`` + ``filename``)
    or at a ``url``; ``sha256`` checks it when known."""
    filename: str
    repo_id: str | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    build: Callable            # build(**overrides) -> SegModel with random (or CLIP-pretrained) weights
    description: str = ""
    weights: WeightSource | None = None   # published checkpoint of the whole model, if any
    clip: tuple[str, str | None] | None = None  # (open_clip arch, weight tag) the model starts from
    published: dict = field(default_factory=dict)  # benchmark -> published number, from the specs
    test_only: bool = False    # tiny presets: random init, for tests
    convention: str | None = None   # benchmark class names its published evaluation used (san, fcclip, tf)
    converter: Callable | None = None   # converter(model, path, clip_weights=...) loads a published file;
    #                                     None: a weights file is CLIP weights (training-free methods)
    needs_clip: bool = False   # the published file lacks (part of) CLIP: CLIP weights are fetched too
    bench_vocabulary: str = "ade150"                        # vocabulary of the speed benchmark
    text_vocabularies: tuple[str, ...] = ("ade150", "ade847")   # vocabularies of its text-encoding benchmark


def preset(name: str, builder: Callable, **fixed) -> Callable:
    """A zoo builder for preset ``name``: ``builder(**fixed, **overrides)`` with
    ``model.config = {"preset": name, **overrides}`` (what a checkpoint saves to
    rebuild the same model)."""
    def build(**overrides):
        model = builder(**{**fixed, **overrides})
        model.config = {"preset": name, **overrides}
        return model
    build.__name__ = f"build_{name.replace('-', '_')}"
    return build
